import { it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import { Effect, HashMap, Layer, Logger, Redacted } from "effect"
import Pg from "pg"
import { describe, expect } from "vitest"
import { startWebhookWorker, WebhookQueue, WebhookWorker } from "../../src/index.js"
import { makeReceiver } from "../utils/Receiver.js"
import { testDatabase } from "../utils/TestDatabase.js"
import { eventually } from "../utils/WorkerHarness.js"
import { fastWorker, queueRows, TEST_KEY } from "./fixtures.js"

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

interface Captured {
  readonly message: string
  readonly annotations: Record<string, unknown>
}

const messageOf = (message: unknown) => (Array.isArray(message) ? message : [message]).filter((part) => typeof part === "string").join(" ")

/** The host's own logger: it keeps the message and annotations of every line. */
const capturingLogger = (lines: Array<Captured>) =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ annotations, message }) => {
      lines.push({ message: messageOf(message), annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
    })
  )

describe("host worker logs: the instance, and readable attempt lines under any logger", () => {
  it.live("WebhookWorker.layer({ instance }): every worker line under the host's logger carries it, shutdown included", () =>
    Effect.gen(function*() {
      const { url } = yield* testDatabase
      const receiver = yield* makeReceiver
      const lines: Array<Captured> = []
      const host = Layer.mergeAll(
        WebhookQueue.layer({ encryptionKey: TEST_KEY }),
        WebhookWorker.layer({ settings: fastWorker, instance: 3 })
      ).pipe(Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections: 4 })))
      yield* Effect.gen(function*() {
        yield* WebhookQueue.enqueue({ destination: { url: receiver.url(), secret: SECRET }, eventType: "order.created", payload: 1 })
        yield* eventually(Effect.map(queueRows, (rows) => rows[0]?.status === "delivered" || undefined), "delivered")
      }).pipe(Effect.provide(host), Effect.provide(capturingLogger(lines)))

      const worker = lines.filter((line) => line.annotations.service === "worker")
      expect(worker.map((line) => line.message)).toEqual(expect.arrayContaining(["Worker started", "Delivering webhook", "Worker stopped"]))
      for (const line of worker) expect(line.annotations, line.message).toMatchObject({ instance: 3 })
      // The attempt's fields are annotations, which every Effect logger prints on the line.
      const attempt = worker.find((line) => line.message === "Delivering webhook")!
      expect(attempt.annotations).toMatchObject({
        delivery_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        event_type: "order.created",
        attempt: 1,
        outcome: "delivered",
        reason: "delivered",
        http_status: 200,
        destination: `127.0.0.1:${receiver.port}`
      })
      expect(Object.values(attempt.annotations).some((value) => typeof value === "object")).toBe(false)
    }).pipe(Effect.scoped))

  it.live("startWebhookWorker({ instance }): its JSON lines on stdout carry it", () =>
    Effect.gen(function*() {
      const { url } = yield* testDatabase
      const receiver = yield* makeReceiver
      const pool = new Pg.Pool({ connectionString: url, max: 4 })
      yield* Effect.addFinalizer(() => Effect.promise(() => pool.end()))
      const written: Array<string> = []
      const write = process.stdout.write
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          process.stdout.write = ((chunk: string | Uint8Array, ...rest: Array<never>) => {
            const text = chunk.toString()
            if (text.startsWith("{")) written.push(text)
            else return write.call(process.stdout, chunk, ...rest)
            return true
          }) as typeof process.stdout.write
        }),
        () => Effect.sync(() => void (process.stdout.write = write))
      )
      const worker = yield* Effect.promise(() =>
        startWebhookWorker({ pool }, { ...fastWorker, encryptionKey: TEST_KEY, instance: 2, logLevel: "INFO" })
      )
      yield* WebhookQueue.enqueue({ destination: { url: receiver.url(), secret: SECRET }, eventType: "order.created", payload: 1 }).pipe(
        Effect.provide(WebhookQueue.layer({ encryptionKey: TEST_KEY })),
        Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 }))
      )
      yield* receiver.waitForRequests(1)
      yield* Effect.promise(() => worker.stop())
      // Lines are written once per event-loop turn.
      yield* Effect.sleep("50 millis")
      const records = written.join("").split("\n").filter((line) => line !== "").map((line) => JSON.parse(line) as Record<string, unknown>)
      expect(records.map((r) => r.msg)).toEqual(expect.arrayContaining(["Worker started", "Delivering webhook", "Worker stopped"]))
      for (const record of records) expect(record, String(record.msg)).toMatchObject({ instance: 2 })
    }).pipe(Effect.scoped))
})
