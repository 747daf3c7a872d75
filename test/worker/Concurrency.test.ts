import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, Either, Layer, type Scope } from "effect"
import { describe, expect } from "vitest"
import { decodeEncryptionKey } from "../../src/config/AppConfig.js"
import { Keyring } from "../../src/crypto/Keyring.js"
import { insertRows, toRow } from "../../src/queue/Enqueue.js"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg } from "../utils/TestDatabase.js"
import { eventually, startWorker, TEST_KEY } from "../utils/WorkerHarness.js"

const withDb = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

const keyring = new Keyring(Either.getOrThrow(decodeEncryptionKey(TEST_KEY)), [])

const enqueue = (count: number, url: string, extra: { idempotencyKey?: (i: number) => string } = {}) =>
  insertRows(Array.from({ length: count }, (_, i) =>
    Either.getOrThrow(toRow({
      destination: { url, secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" },
      eventType: "order.created",
      payload: { order: i },
      idempotencyKey: extra.idempotencyKey?.(i)
    }, keyring, 5))))

const countByStatus = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ status: string; n: string }>`SELECT status, count(*) AS n FROM webhook_delivery_queue GROUP BY status`).pipe(
    Effect.map((rows) => Object.fromEntries(rows.map((row) => [row.status, Number(row.n)]))),
    Effect.orDie
  )

describe("workers sharing one queue", () => {
  it.live("two live workers never deliver a row twice", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: Math.random() < 0.1 ? 20 : 0 })
      const rows = 400
      yield* enqueue(rows, receiver.url())
      // Generous timeout and lease: any duplicate would come from the claim, not from a retry.
      const stopA = yield* startWorker({ batchSize: 7, maxConcurrentDeliveries: 20, deliveryTimeoutMs: 15_000, leaseMs: 60_000 })
      const stopB = yield* startWorker({ batchSize: 13, maxConcurrentDeliveries: 30, deliveryTimeoutMs: 15_000, leaseMs: 60_000 })
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === rows || undefined), "all delivered", 30_000)
      yield* stopA
      yield* stopB
      const ids = receiver.requests.map((request) => String(request.headers["webhook-id"]))
      expect(ids).toHaveLength(rows)
      expect(new Set(ids).size).toBe(rows)
      const sql = yield* SqlClient.SqlClient
      const [attempts] = yield* sql<{ max: number; workers: string }>`
        SELECT max(attempt_count) AS max, count(DISTINCT worker_id) AS workers FROM webhook_delivery_queue q JOIN webhook_delivery_log l ON l.delivery_id = q.id`
      expect(attempts).toEqual({ max: 1, workers: "2" })
    })), 60_000)

  it.live("a slow endpoint does not hold up the others (no batch barrier)", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = (request) => (request.path === "/slow" ? { status: 200, delayMs: 3000 } : { status: 200 })
      yield* enqueue(3, receiver.url("/slow"))
      yield* enqueue(200, receiver.url("/fast"))
      const started = Date.now()
      const stop = yield* startWorker({ batchSize: 10, maxConcurrentDeliveries: 10, deliveryTimeoutMs: 5000, leaseMs: 20_000 })
      yield* eventually(Effect.map(countByStatus, (counts) => (counts.delivered ?? 0) >= 200 || undefined), "fast rows delivered", 20_000)
      const fastDone = Date.now() - started
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === 203 || undefined), "all delivered", 20_000)
      yield* stop
      // 200 fast rows went out through the 7 free slots while 3 slots sat on the slow endpoint.
      expect(fastDone).toBeLessThan(3000)
    })), 60_000)

  it.live("an idempotency key queues one delivery per destination; a repeat returns the first id", () =>
    withDb(Effect.gen(function*() {
      const first = yield* enqueue(1, "https://example.com/a", { idempotencyKey: () => "order-1" })
      const again = yield* enqueue(1, "https://example.com/a", { idempotencyKey: () => "order-1" })
      const elsewhere = yield* enqueue(1, "https://example.com/b", { idempotencyKey: () => "order-1" })
      const batch = yield* enqueue(3, "https://example.com/a", { idempotencyKey: (i) => (i === 2 ? "order-2" : "order-1") })
      expect(first[0]!.duplicate).toBe(false)
      expect(again[0]).toEqual({ id: first[0]!.id, duplicate: true })
      expect(elsewhere[0]!.duplicate).toBe(false)
      expect(elsewhere[0]!.id).not.toBe(first[0]!.id)
      expect(batch.map((e) => e.duplicate)).toEqual([true, true, false])
      expect(batch[0]!.id).toBe(first[0]!.id)
      const counts = yield* countByStatus
      expect(counts.pending).toBe(3)
    })))

  it.live("SQL failures while recording results are retried; nothing is lost when connections are killed", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 5 })
      const [{ db }] = (yield* sql<{ db: string }>`SELECT current_database() AS db`) as unknown as [{ db: string }]
      const stop = yield* startWorker({ pollIntervalMs: 30_000, maxConcurrentDeliveries: 10 })
      yield* enqueue(150, receiver.url())
      // Kill every other connection to this database (the worker's pool and its LISTEN connection), twice.
      for (let i = 0; i < 2; i++) {
        yield* Effect.sleep("150 millis")
        yield* sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${db} AND pid <> pg_backend_pid()`
      }
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === 150 || undefined), "all delivered after reconnects", 30_000)
      // The LISTEN connection came back: a new row is picked up long before the 30 s poll.
      const before = receiver.requests.length
      const t0 = Date.now()
      yield* enqueue(1, receiver.url())
      yield* eventually(Effect.sync(() => receiver.requests.length > before || undefined), "woken by NOTIFY", 10_000)
      expect(Date.now() - t0).toBeLessThan(5000)
      yield* stop
      expect(new Set(receiver.requests.map((r) => r.headers["webhook-id"])).size).toBe(151)
    })), 60_000)

  it.live("concurrent producers each committing one row: every row is delivered promptly though notifications are coalesced", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const stop = yield* startWorker({ pollIntervalMs: 30_000, maxConcurrentDeliveries: 20 })
      // 10 rounds of 20 producers committing at the same moment, each in its own transaction.
      for (let round = 0; round < 10; round++) {
        yield* Effect.forEach(Array.from({ length: 20 }, (_, i) => i), () => enqueue(1, receiver.url()), { concurrency: 20 })
      }
      const t0 = Date.now()
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === 200 || undefined), "all delivered without polling", 10_000)
      expect(Date.now() - t0).toBeLessThan(5_000)
      yield* stop
    })), 60_000)
})
