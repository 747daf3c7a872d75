import { it } from "@effect/vitest"
import { Effect } from "effect"
import type { AddressInfo } from "node:net"
import { describe, expect } from "vitest"
import { listen, type ReceivedWebhook } from "../../src/cli/ReceiveCommand.js"
import { signatureHeader } from "../../src/signing/Signer.js"

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

/** The receiver on a free loopback port, with what it reports. */
const receiver = (status = 200) =>
  Effect.gen(function*() {
    const seen: Array<ReceivedWebhook> = []
    const server = yield* listen({
      host: "127.0.0.1",
      port: 0,
      secret: SECRET,
      status,
      nowMs: () => Date.now(),
      onRequest: (request) => seen.push(request)
    })
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, seen }
  })

const post = (url: string, body: string, headers: Record<string, string>) =>
  Effect.promise(async () => {
    const response = await fetch(url, { method: "POST", body, headers: { "content-type": "application/json", ...headers } })
    return { status: response.status, text: await response.text() }
  })

const signed = (secret: string, id: string, body: string, timestamp = Math.floor(Date.now() / 1000)) => ({
  "webhook-id": id,
  "webhook-timestamp": String(timestamp),
  "webhook-signature": signatureHeader([secret], id, timestamp, body)
})

describe("webhook-worker receive", () => {
  it.live("a correctly signed request is verified and answered with --status", () =>
    Effect.gen(function*() {
      const { seen, url } = yield* receiver(202)
      const body = `{"type":"test.hello","timestamp":"2026-01-01T00:00:00.000Z","data":{"n":1}}`
      const response = yield* post(url, body, signed(SECRET, "msg_1", body))
      expect(response.status).toBe(202)
      expect(seen).toEqual([expect.objectContaining({
        method: "POST",
        path: "/hook",
        webhookId: "msg_1",
        eventType: "test.hello",
        verified: true,
        signature: "verified",
        status: 202,
        body
      })])
    }).pipe(Effect.scoped))

  it.live("a request signed with another secret, or not signed, is reported and refused with 401", () =>
    Effect.gen(function*() {
      const { seen, url } = yield* receiver()
      const body = `{"type":"test.hello","data":{}}`
      expect((yield* post(url, body, signed("whsec_b3RoZXJzZWNyZXRvdGhlcnNlY3JldA==", "msg_2", body))).status).toBe(401)
      expect((yield* post(url, body, {})).status).toBe(401)
      const stale = yield* post(url, body, signed(SECRET, "msg_3", body, Math.floor(Date.now() / 1000) - 3600))
      expect(stale).toEqual({ status: 401, text: "signature not verified: timestamp too old\n" })
      expect(seen.map((request) => [request.verified, request.signature])).toEqual([
        [false, "no matching signature"],
        [false, "missing webhook-id, webhook-timestamp or webhook-signature header"],
        [false, "timestamp too old"]
      ])
    }).pipe(Effect.scoped))

  it.live("a taken port is a one-line error naming --port", () =>
    Effect.gen(function*() {
      const { url } = yield* receiver()
      const port = Number(new URL(url).port)
      const error = yield* Effect.flip(listen({ host: "127.0.0.1", port, secret: SECRET, status: 200, nowMs: () => Date.now(), onRequest: () => undefined }))
      expect(error.message).toBe(`--port ${port}: 127.0.0.1:${port} is already in use`)
    }).pipe(Effect.scoped))
})
