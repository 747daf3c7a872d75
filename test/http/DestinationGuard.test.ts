import { it } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Layer, Option } from "effect"
import { describe, expect } from "vitest"
import { blockedReason } from "../../src/http/DestinationGuard.js"
import * as DeliveryHttp from "../../src/http/DeliveryHttp.js"
import { validateUrl } from "../../src/queue/Enqueue.js"
import { makeReceiver } from "../utils/Receiver.js"

const blocked = [
  ["0.0.0.0", "unspecified"],
  ["10.1.2.3", "private"],
  ["100.64.0.1", "carrier-grade NAT"],
  ["127.0.0.1", "loopback"],
  ["127.255.255.254", "loopback"],
  ["169.254.169.254", "cloud metadata"],
  ["169.254.1.1", "link-local"],
  ["172.16.0.1", "private"],
  ["172.31.255.255", "private"],
  ["192.0.0.8", "IETF protocol assignments"],
  ["192.168.1.1", "private"],
  ["198.18.0.1", "benchmarking"],
  ["224.0.0.1", "multicast"],
  ["240.0.0.1", "reserved"],
  ["255.255.255.255", "reserved"],
  ["::", "unspecified"],
  ["::1", "loopback"],
  ["fe80::1", "link-local"],
  ["fc00::1", "unique local (private)"],
  ["fd00:ec2::254", "cloud metadata"],
  ["ff02::1", "multicast"],
  ["::ffff:127.0.0.1", "loopback (127.0.0.1 as IPv4-mapped)"],
  ["::ffff:7f00:1", "loopback (127.0.0.1 as IPv4-mapped)"],
  ["::ffff:169.254.169.254", "cloud metadata (169.254.169.254 as IPv4-mapped)"],
  ["64:ff9b::a00:1", "private (10.0.0.1 as NAT64)"],
  ["64:ff9b::169.254.169.254", "cloud metadata (169.254.169.254 as NAT64)"],
  ["2002:7f00:1::", "loopback (127.0.0.1 as 6to4)"],
  ["::127.0.0.1", "loopback (127.0.0.1 as IPv4-compatible)"],
  ["2001:db8::1", "documentation"],
  ["2001:2::1", "benchmarking"],
  ["2001:2:0:ffff::1", "benchmarking"],
  ["2001::1", "Teredo"]
] as const

describe("destination guard (SSRF)", () => {
  it.each(blocked)("%s is blocked as %s", (address, reason) => {
    expect(blockedReason(address)).toEqual(Option.some(reason))
  })

  it.each(["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"])(
    "%s (public) is allowed",
    (address) => expect(blockedReason(address)).toEqual(Option.none())
  )

  it.prop("every address in 10/8, 172.16/12, 192.168/16, 127/8 is blocked, also as IPv4-mapped IPv6", [
    fc.oneof(
      fc.tuple(fc.constant(10), fc.nat(255), fc.nat(255), fc.nat(255)),
      fc.tuple(fc.constant(172), fc.integer({ min: 16, max: 31 }), fc.nat(255), fc.nat(255)),
      fc.tuple(fc.constant(192), fc.constant(168), fc.nat(255), fc.nat(255)),
      fc.tuple(fc.constant(127), fc.nat(255), fc.nat(255), fc.nat(255))
    )
  ], ([octets]) => {
    const v4 = octets.join(".")
    expect(Option.isSome(blockedReason(v4))).toBe(true)
    expect(Option.isSome(blockedReason(`::ffff:${v4}`))).toBe(true)
  })

  it.prop("public IPv4 addresses are never blocked", [fc.ipV4()], ([address]) => {
    const [a, b] = address.split(".").map(Number) as [number, number]
    const special = a === 0 || a === 10 || a === 127 || a >= 224 || (a === 100 && b >= 64 && b < 128) || (a === 169 && b === 254) ||
      (a === 172 && b >= 16 && b < 32) || (a === 192 && (b === 168 || b === 0 || b === 88)) || (a === 198 && (b === 18 || b === 19 || b === 51)) ||
      (a === 203 && b === 0)
    fc.pre(!special)
    expect(blockedReason(address)).toEqual(Option.none())
  })

  // Every way of writing a loopback or private host in a URL is refused before or at connect.
  const sendTo = (url: string, allowPrivateNetworks = false) =>
    Effect.flatMap(DeliveryHttp.DeliveryHttp, (http) =>
      http.send({ url, headers: {}, body: "{}", timeoutMs: 2000, allowPrivateNetworks }))

  it.scopedLive("URL spellings of loopback and private hosts are blocked; DNS names resolving to them too", () =>
    Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const port = receiver.port
      const urls = [
        `http://127.0.0.1:${port}/`,
        `http://2130706433:${port}/`,
        `http://0x7f.1:${port}/`,
        `http://0177.0.0.1:${port}/`,
        `http://[::1]:${port}/`,
        `http://[::ffff:127.0.0.1]:${port}/`,
        `http://localhost:${port}/`,
        `http://169.254.169.254/latest/meta-data/`,
        `http://10.0.0.1/`,
        `http://[fd00:ec2::254]/`
      ]
      for (const url of urls) {
        const reply = yield* sendTo(url)
        expect(reply.outcome._tag, url).toBe("DestinationBlocked")
      }
      expect(receiver.requests).toHaveLength(0)
      // The same receiver is reachable once private networks are allowed.
      const allowed = yield* sendTo(`http://localhost:${port}/`, true)
      expect(allowed.outcome._tag).toBe("Delivered")
    }).pipe(Effect.provide(Layer.fresh(DeliveryHttp.layer))))

  it.scopedLive("redirects are not followed: a 302 is the attempt's outcome", () =>
    Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = (request) =>
        request.path === "/moved" ? { status: 302, headers: { location: receiver.url("/target") } } : { status: 200 }
      const reply = yield* sendTo(receiver.url("/moved"), true)
      expect(reply.outcome).toMatchObject({ _tag: "RejectedStatus", status: 302 })
      expect(receiver.requests.map((r) => r.path)).toEqual(["/moved"])
    }).pipe(Effect.provide(Layer.fresh(DeliveryHttp.layer))))

  it.scopedLive("a response body is kept up to 64 KiB", () =>
    Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 500, body: "x".repeat(200_000) })
      const reply = yield* sendTo(receiver.url(), true)
      expect(reply.responseBody).toHaveLength(64 * 1024)
    }).pipe(Effect.provide(Layer.fresh(DeliveryHttp.layer))))

  it("invalid URLs are named and never sent", () => {
    expect(DeliveryHttp.checkUrl("not a url", false)).toMatchObject({ _tag: "InvalidUrl" })
    expect(DeliveryHttp.checkUrl("ftp://example.com/x", false)).toMatchObject({ _tag: "InvalidUrl", reason: "scheme ftp is not http or https" })
    expect(DeliveryHttp.checkUrl("https://user:pass@example.com/", false)).toBeInstanceOf(URL)
    expect(DeliveryHttp.redactUrl("https://user:pass@example.com/x")).toBe("https://***@example.com/x")
  })

  it("an unusable URL's message never repeats its text: a token in the path, a user and password without the //", () => {
    const inputs = ["hooks.slack.com/services/T0001/B0001/sEcReTtOkEn123", "admin:hunter2@hooks.example.com/x", "https//alice:Pa55w0rd@hooks.example.com/x"]
    for (const raw of inputs) {
      const atDelivery = DeliveryHttp.checkUrl(raw, false)
      expect(atDelivery).toMatchObject({ _tag: "InvalidUrl" })
      const atEnqueue = validateUrl(raw)
      expect(Either.isLeft(atEnqueue)).toBe(true)
      for (const message of [(atDelivery as { reason: string }).reason, Either.isLeft(atEnqueue) ? atEnqueue.left.message : ""]) {
        for (const secret of ["sEcReTtOkEn123", "T0001", "admin", "hunter2", "alice", "Pa55w0rd"]) expect(message).not.toContain(secret)
      }
    }
    // A scheme written as one, with its //, is still named.
    const ftp = validateUrl("ftp://files.example.com/in")
    expect(Either.isLeft(ftp) && ftp.left.message).toBe("url: scheme must be http or https, got ftp")
  })
})
