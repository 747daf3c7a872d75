import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, FastCheck as fc, Layer, Option, Redacted, type Scope } from "effect"
import { describe, expect } from "vitest"
import { Keyring } from "../../src/crypto/Keyring.js"
import * as Log from "../../src/observability/Log.js"
import * as Metrics from "../../src/observability/Metrics.js"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg } from "../utils/TestDatabase.js"
import { eventually, insertRaw, rowById, statusIs, TEST_KEY } from "../utils/WorkerHarness.js"
import { enqueue, insertEndpoint, insertForEndpoint, start, workerLayer } from "./support.js"

const scoped = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

const metrics = () => Metrics.make({ tenantLabels: true, processMetrics: false })

/** Runs `effect` with every log line (all levels) captured in `lines`. */
const capturing = (lines: Array<string>, format: "json" | "pretty" = "json", threshold = new Log.LogThreshold("DEBUG")) =>
  Log.layer(format, threshold, { write: (line) => lines.push(line) }, { instance: 1 })

const parse = (lines: ReadonlyArray<string>) => lines.map((line) => JSON.parse(line) as Record<string, unknown>)

describe("log lines", () => {
  it.live("never contain a secret: plaintext, encrypted, endpoint, URL password, or the encryption key (errors included)", () =>
    scoped(Effect.gen(function*() {
      const lines: Array<string> = []
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      receiver.respond = (request) => (request.path === "/fails" ? { status: 500, body: "receiver said no" } : { status: 200 })

      const plainSecret = "plain-s3kr1t-4f7a1c"
      const librarySecret = "whsec_bGlicmFyeS1zM2tyMXQtOWIyZQ=="
      const endpointSecret = "endpoint-s3kr1t-77de"
      const password = "pw-s3kr1t-0c1d"
      const otherKey = new Keyring(Buffer.alloc(32, 7), [])
      const undecryptable = otherKey.encrypt("other-key-s3kr1t-5e5e")
      const ourKeyId = new Keyring(Buffer.from(TEST_KEY, "base64"), []).currentId
      const corrupted = `enc:v1:${ourKeyId}:${Buffer.from("corrupted-s3kr1t-a1a1-with-enough-bytes-to-parse").toString("base64")}`

      const raw = yield* insertRaw({ url: receiver.url(), secret: plainSecret, userId: "u1" })
      const library = yield* enqueue({ url: receiver.url("/fails"), secret: librarySecret, maxAttempts: 2 })
      const libraryStored = (yield* rowById(library)).secret!
      const endpoint = yield* insertEndpoint(receiver.url("/partner"), endpointSecret, "u2")
      const viaEndpoint = yield* insertForEndpoint(endpoint, "u2")
      const withPassword = yield* insertRaw({ url: receiver.url("/userinfo").replace("http://", `http://hook:${password}@`), secret: plainSecret })
      const badKey = yield* insertRaw({ url: receiver.url(), secret: undecryptable })
      const badValue = yield* insertRaw({ url: receiver.url(), secret: corrupted })

      yield* Effect.gen(function*() {
        const { stop } = yield* start(workerLayer({ metrics: metrics() }))
        for (const id of [raw, viaEndpoint, withPassword]) yield* eventually(statusIs(id, "delivered"), "delivered")
        for (const id of [library, badKey, badValue]) yield* eventually(statusIs(id, "dead_letter"), "dead-lettered")
        yield* stop
      }).pipe(Effect.provide(capturing(lines)))

      // The worker encrypted the plaintext secrets in place; those forms must not be logged either.
      const stored = yield* sql<{ secret: string }>`SELECT secret FROM webhook_delivery_queue WHERE id IN (${raw}, ${withPassword})`
      const encryptedForms = stored.map((row) => row.secret)
      expect(encryptedForms.every((s) => s.startsWith("enc:v1:"))).toBe(true)

      const text = lines.join("")
      expect(text).toContain("undecryptable secret") // the bad rows' errors were logged...
      for (const secret of [
        plainSecret,
        librarySecret,
        librarySecret.slice(6),
        Buffer.from(librarySecret.slice(6), "base64").toString(),
        libraryStored,
        endpointSecret,
        password,
        undecryptable,
        undecryptable.slice(16),
        corrupted,
        corrupted.slice(16),
        "s3kr1t", // every distinctive secret above carries this marker
        TEST_KEY,
        ...encryptedForms,
        ...encryptedForms.map((s) => s.slice(16))
      ]) {
        expect(text, `log output contains ${secret}`).not.toContain(secret)
      }

      // ...and every attempt has its line, with what an operator greps for.
      const attempts = parse(lines).filter((l) => l.msg === "Delivering webhook")
      expect(attempts).toHaveLength(7) // six rows, one retried
      for (const line of attempts) {
        expect(line).toMatchObject({ level: "INFO", instance: 1, service: "worker" })
        expect(typeof line.delivery_id).toBe("string")
        expect(typeof line.attempt).toBe("number")
        expect(["delivered", "failed", "dead_letter"]).toContain(line.outcome)
        expect(typeof line.duration_ms).toBe("number")
        expect(line.destination).toBe(`127.0.0.1:${receiver.port}`)
      }
      const bad = attempts.find((l) => l.delivery_id === badKey)!
      expect(bad).toMatchObject({ outcome: "dead_letter", reason: "undecryptable_secret" })
      expect(String(bad.error)).toMatch(/^undecryptable secret: encrypted with key [0-9a-f]{8}, which is neither/)
    })))

  it.live("one JSON object per line by default (journald greps it); LOG_FORMAT=pretty is readable", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const json: Array<string> = []
      const pretty: Array<string> = []
      for (const [format, lines] of [["json", json], ["pretty", pretty]] as const) {
        const id = yield* insertRaw({ url: receiver.url() })
        yield* Effect.gen(function*() {
          const { stop } = yield* start(workerLayer({ metrics: metrics() }))
          yield* eventually(statusIs(id, "delivered"), "delivered")
          yield* stop
        }).pipe(Effect.provide(capturing(lines, format, new Log.LogThreshold("INFO"))))
      }
      for (const line of json) {
        expect(line.endsWith("\n")).toBe(true)
        expect(line.slice(0, -1)).not.toContain("\n")
        expect(JSON.parse(line)).toMatchObject({ level: expect.stringMatching(/^(INFO|WARN|ERROR)$/), msg: expect.any(String), time: expect.any(String) })
      }
      const grepped = json.filter((line) => line.includes("Delivering webhook"))
      expect(grepped).toHaveLength(1)
      const delivering = pretty.find((line) => line.includes("Delivering webhook"))!
      expect(delivering).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z INFO  Delivering webhook instance=1 .*delivery_id=[0-9a-f-]{36} .*outcome=delivered/)
      expect(delivering.startsWith("{")).toBe(false)
    })))

  it.live("LOG_LEVEL is honoured and can change while running (the threshold SIGHUP sets)", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const lines: Array<string> = []
      const threshold = new Log.LogThreshold("WARN")
      yield* Effect.gen(function*() {
        const { stop } = yield* start(workerLayer({ metrics: metrics() }))
        const quiet = yield* insertRaw({ url: receiver.url() })
        yield* eventually(statusIs(quiet, "delivered"), "delivered")
        expect(lines.filter((l) => l.includes("Delivering webhook"))).toEqual([])
        expect(lines.filter((l) => l.includes("Worker started"))).toEqual([])

        threshold.set("INFO")
        const loud = yield* insertRaw({ url: receiver.url() })
        yield* eventually(statusIs(loud, "delivered"), "delivered")
        yield* stop
        expect(parse(lines).filter((l) => l.msg === "Delivering webhook").map((l) => l.delivery_id)).toEqual([loud])
        expect(parse(lines).some((l) => l.level === "DEBUG")).toBe(false)
      }).pipe(Effect.provide(capturing(lines, "json", threshold)))
    })))

  it.effect("under journald (JOURNAL_STREAM) each line starts with its syslog priority, the line itself unchanged after it", () =>
    Effect.gen(function*() {
      for (const format of ["json", "pretty"] as const) {
        const lines: Array<string> = []
        const journal = Log.layer(format, new Log.LogThreshold("DEBUG"), { write: (line) => lines.push(line), syslogPriorities: true }, { instance: 1 })
        yield* Effect.gen(function*() {
          yield* Effect.logDebug("d")
          yield* Effect.logInfo("i")
          yield* Effect.logWarning("w")
          yield* Effect.logError("e")
          Option.getOrThrow(yield* Log.directLog)("INFO", "Delivering webhook", { attempt: 1 })
          Option.getOrThrow(yield* Log.directLog)("WARN", "Delivering webhook", { attempt: 2 })
        }).pipe(Effect.provide(journal))
        expect(lines.map((line) => line.slice(0, 3))).toEqual(["<7>", "<6>", "<4>", "<3>", "<6>", "<4>"])
        const rest = lines.map((line) => line.slice(3))
        if (format === "json") {
          expect(parse(rest).map((line) => line.level)).toEqual(["DEBUG", "INFO", "WARN", "ERROR", "INFO", "WARN"])
        } else {
          expect(rest[2]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z WARN  w instance=1\n$/)
        }
      }
      // Elsewhere (a terminal, a pipe, a file) lines have no prefix.
      const plain: Array<string> = []
      yield* Effect.logWarning("w").pipe(Effect.provide(capturing(plain)))
      expect(plain[0]!.startsWith("{")).toBe(true)
    }))

  it.effect("a line is written whatever the annotations hold (bigints, cycles, redacted values)", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const cycle: Record<string, unknown> = { name: "cycle" }
      cycle.self = cycle
      yield* Effect.logWarning("odd fields").pipe(
        Effect.annotateLogs({ big: 12345678901234567890n, cycle, key: Redacted.make("zq-s3kr1t-redacted") }),
        Effect.provide(capturing(lines))
      )
      expect(lines).toHaveLength(1)
      expect(lines[0]).toContain("12345678901234567890")
      expect(lines[0]).not.toContain("zq-s3kr1t-redacted")
    }))

  it.effect("the per-attempt writer's line is the logger's own: same members in the same order, valid JSON, odd values included", () =>
    Effect.gen(function*() {
      const lines: Array<string> = []
      const fields = { service: "worker", delivery_id: "d-1", attempt: 2, http_status: null, error: "quote \" and\nnewline", big: 5n }
      yield* Effect.gen(function*() {
        const direct = yield* Log.directLog
        expect(Option.isSome(direct)).toBe(true)
        Option.getOrThrow(direct)("INFO", "Delivering webhook", fields)
        yield* Effect.logInfo("Delivering webhook").pipe(Effect.annotateLogs(fields))
      }).pipe(Effect.provide(capturing(lines)))
      expect(lines).toHaveLength(2)
      const [viaDirect, viaLogger] = lines.map((line) => JSON.parse(line) as Record<string, unknown>)
      expect(Object.keys(viaDirect!)).toEqual(["time", "level", "msg", "instance", "service", "delivery_id", "attempt", "http_status", "error", "big"])
      expect({ ...viaDirect, time: "t" }).toEqual({ ...viaLogger, time: "t" })
      expect(viaDirect!.big).toBe("5")
      expect(lines[0]!.endsWith("}\n")).toBe(true)
    }))

  // The direct writer writes its line as text; it must be the very line the record would give.
  const lineFields = fc.dictionary(
    fc.oneof(fc.stringMatching(/^[a-z][a-z_]{0,11}$/), fc.constantFrom("time", "level", "msg", "instance")),
    fc.oneof(fc.jsonValue(), fc.constant(undefined), fc.bigInt())
  )
  it.prop("the per-attempt writer's line is byte for byte the merged record's JSON", [fc.string(), lineFields], ([message, fields]) => {
    const lines: Array<string> = []
    Effect.runSync(Effect.gen(function*() {
      Option.getOrThrow(yield* Log.directLog)("INFO", message, fields)
    }).pipe(Effect.provide(capturing(lines))))
    expect(lines).toHaveLength(1)
    const time = (JSON.parse(lines[0]!) as { time: string }).time
    const record = { time, level: "INFO", msg: message, instance: 1, ...fields }
    const expected = JSON.stringify(record, (_, value: unknown) => (typeof value === "bigint" ? value.toString() : value))
    expect(lines[0]).toBe(expected + "\n")
  })
})
