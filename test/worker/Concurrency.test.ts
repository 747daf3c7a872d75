import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { type Context, Duration, Effect, Either, Layer, type Scope } from "effect"
import { describe, expect } from "vitest"
import { decodeEncryptionKey } from "../../src/config/AppConfig.js"
import { Keyring } from "../../src/crypto/Keyring.js"
import { insertRows, toRow } from "../../src/queue/Enqueue.js"
import { type Completion, DeliveryQueue } from "../../src/queue/DeliveryQueue.js"
import * as Completer from "../../src/worker/Completer.js"
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

  it.live("while every slot is busy a batch is claimed ahead; at shutdown it goes back unattempted, due at once", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 3000 })
      yield* enqueue(20, receiver.url())
      const stop = yield* startWorker({ batchSize: 6, maxConcurrentDeliveries: 2, deliveryTimeoutMs: 5000, leaseMs: 60_000 })
      yield* receiver.waitForRequests(2)
      // One claim of a full batch: 2 rows sending, 4 held ahead (no further claim while 3 or more wait).
      yield* eventually(Effect.map(countByStatus, (counts) => counts.processing === 6 || undefined), "a batch claimed ahead", 2000)
      expect(receiver.requests).toHaveLength(2)
      yield* stop
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ status: string; attempt_count: number; locked_by: string | null; due: boolean }>`
        SELECT status, attempt_count, locked_by, next_retry_at <= now() AS due FROM webhook_delivery_queue`
      // The two in flight finished and were recorded; the four held ahead went back uncounted.
      expect(receiver.requests).toHaveLength(2)
      expect(rows.filter((row) => row.status === "delivered")).toHaveLength(2)
      expect(rows.filter((row) => row.status !== "delivered")).toEqual(
        Array.from({ length: 18 }, () => ({ status: "pending", attempt_count: 0, locked_by: null, due: true }))
      )
    })), 30_000)

  it.live("rows claimed ahead by a worker whose slots hang go back within seconds, and a worker with free slots sends them", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = (request) => (request.path === "/hang" ? { status: 200, delayMs: 12_000 } : { status: 200 })
      yield* enqueue(1, receiver.url("/hang"))
      const stopA = yield* startWorker({ batchSize: 4, maxConcurrentDeliveries: 1, deliveryTimeoutMs: 15_000, leaseMs: 60_000 })
      yield* receiver.waitForRequests(1)
      yield* enqueue(4, receiver.url("/fast"))
      // The busy worker claims them ahead of its one hanging slot…
      yield* eventually(Effect.map(countByStatus, (counts) => counts.processing === 5 || undefined), "rows claimed ahead", 5000)
      const enqueued = Date.now()
      const stopB = yield* startWorker({ batchSize: 10, maxConcurrentDeliveries: 10, deliveryTimeoutMs: 15_000, leaseMs: 60_000 })
      // …and hands them back after 2 s of waiting, not after the 12 s its slot is held.
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === 4 || undefined), "fast rows delivered", 8000)
      expect(Date.now() - enqueued).toBeLessThan(5000)
      const fast = receiver.requests.filter((request) => request.path === "/fast")
      expect(new Set(fast.map((request) => request.headers["webhook-id"])).size).toBe(4)
      expect(fast).toHaveLength(4)
      yield* stopB
      yield* stopA
    })), 40_000)

  it.live("a row held ahead for half its lease's slack is handed back unsent, never attempted past its lease", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 900 })
      yield* enqueue(4, receiver.url())
      // The lease outlasts the timeout by 0.2 s: a row held ahead 0.1 s goes back rather than out
      // (sent after 0.9 s in hand, its lease would run out mid-attempt and it would be claimed again).
      const stop = yield* startWorker({ batchSize: 4, maxConcurrentDeliveries: 1, deliveryTimeoutMs: 1000, leaseMs: 1200 })
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === 4 || undefined), "all delivered", 20_000)
      yield* stop
      const sql = yield* SqlClient.SqlClient
      const attempts = yield* sql<{ attempt_count: number }>`SELECT attempt_count FROM webhook_delivery_queue`
      // Each was sent once, on its first counted attempt, though most were claimed more than once.
      expect(attempts.map((row) => row.attempt_count)).toEqual([1, 1, 1, 1])
      expect(receiver.requests).toHaveLength(4)
      expect(new Set(receiver.requests.map((request) => request.headers["webhook-id"])).size).toBe(4)
      const logged = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM webhook_delivery_log`
      expect(logged[0]!.n).toBe(4)
    })), 30_000)

  it.live("a stale result and a current one for the same row, waiting together: only the current one is recorded and logged", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<{ id: string }>`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, locked_by, locked_until, next_retry_at)
        VALUES ('https://example.com/h', 's', 'e', '{}', 'processing', 2, 'w1', now() + interval '1 minute', now() + interval '1 minute')
        RETURNING id::text`
      const result = (attempt: number): Completion => ({
        id: row!.id, attempt, status: "delivered", retryDelayMs: null, responseStatus: 200, error: null,
        reason: "delivered", responseBody: `attempt ${attempt}`, durationMs: 1, disableEndpoint: null
      })
      const recorded: Array<number> = []
      const lost: Array<number> = []
      yield* Effect.gen(function*() {
        const completer = yield* Completer.make({
          workerId: "w1",
          audit: () => true,
          onLeaseLost: (batch) => Effect.sync(() => lost.push(...batch.map((c) => c.attempt))),
          onRecorded: (batch) => Effect.sync(() => recorded.push(...batch.map((c) => c.attempt)))
        })
        // The worker's own expired lease on attempt 1, re-claimed as attempt 2: both results wait.
        completer.record(result(1))
        completer.record(result(2))
        yield* completer.drain
      }).pipe(Effect.provide(DeliveryQueue.layer), Effect.scoped)
      expect(recorded).toEqual([2])
      expect(lost).toEqual([1])
      const logged = yield* sql<{ attempt: number; response_body: string }>`
        SELECT attempt, response_body FROM webhook_delivery_log WHERE delivery_id = ${row!.id}`
      expect(logged).toEqual([{ attempt: 2, response_body: "attempt 2" }])
    })))

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

describe("recording results (group commit)", () => {
  it.live("results that arrive during a write wait a linger for the next one, instead of going out in a small write of their own", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const rows = 1000
      yield* enqueue(rows, receiver.url())
      // Each write is the real one behind 30 ms, so results pile up while it is under way.
      const writes: Array<{ startMs: number; endMs: number; results: number }> = []
      const stop = yield* startWorker({ batchSize: 50, maxConcurrentDeliveries: 50, deliveryTimeoutMs: 15_000, leaseMs: 60_000 }, {
        wrapQueue: (queue) => ({
          ...queue,
          complete: (workerId, completions, audit) =>
            Effect.suspend(() => {
              const write = { startMs: performance.now(), endMs: Infinity, results: completions.length }
              writes.push(write)
              return Effect.sleep(Duration.millis(30)).pipe(
                Effect.zipRight(queue.complete(workerId, completions, audit)),
                Effect.ensuring(Effect.sync(() => { write.endMs = performance.now() }))
              )
            })
        })
      })
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === rows || undefined), "all delivered", 30_000)
      yield* stop
      expect(writes.reduce((sum, write) => sum + write.results, 0)).toBe(rows)
      // The next write starts a linger (10 ms) after the one before it ended, unless a full batch
      // (200 results) was already waiting; a write right behind another is the defect.
      const rushed = writes.slice(1).flatMap((write, i) => {
        const gapMs = write.startMs - writes[i]!.endMs
        return gapMs < 5 && write.results < 200 ? [{ gapMs: Math.round(gapMs * 10) / 10, results: write.results }] : []
      })
      expect(rushed).toEqual([])
      expect(writes.length).toBeLessThan(rows / 10)
    })), 60_000)
})

describe("claiming with a backlog", () => {
  interface ClaimCall {
    readonly startMs: number
    readonly endMs: number
    readonly rows: number
    readonly limit: number
  }
  // Each claim is the real one behind 40 ms (a busy or distant database), so one claim at a
  // time would take in at most a batch per 40 ms.
  const slowClaims = (calls: Array<ClaimCall>) => ({
    wrapQueue: (queue: Context.Tag.Service<typeof DeliveryQueue>) => ({
      ...queue,
      claim: (workerId: string, limit: number, leaseMs: number) =>
        Effect.suspend(() => {
          const startMs = performance.now()
          return Effect.sleep(Duration.millis(40)).pipe(
            Effect.zipRight(queue.claim(workerId, limit, leaseMs)),
            Effect.tap((rows) => Effect.sync(() => calls.push({ startMs, endMs: performance.now(), rows: rows.length, limit })))
          )
        })
    })
  })
  const overlapping = (calls: ReadonlyArray<ClaimCall>) => {
    const sorted = [...calls].sort((a, b) => a.startMs - b.startMs)
    return sorted.slice(1).filter((call, i) => call.startMs < sorted[i]!.endMs).length
  }
  // Delivers a backlog of `rows` with batches of 5 and `slots` slots; the claims it made.
  const deliverBacklog = (rows: number, slots: number) =>
    Effect.gen(function*() {
      const receiver = yield* makeReceiver
      yield* enqueue(rows, receiver.url())
      const calls: Array<ClaimCall> = []
      const stop = yield* startWorker({ batchSize: 5, maxConcurrentDeliveries: slots, deliveryTimeoutMs: 15_000, leaseMs: 60_000 }, slowClaims(calls))
      yield* eventually(Effect.map(countByStatus, (counts) => counts.delivered === rows || undefined), "all delivered", 30_000)
      yield* stop
      const ids = receiver.requests.map((request) => String(request.headers["webhook-id"]))
      expect(new Set(ids).size).toBe(rows)
      expect(ids).toHaveLength(rows)
      // Every claim still takes at most WORKER_BATCH_SIZE rows.
      expect(calls.filter((call) => call.rows > 5 || call.limit !== 5)).toEqual([])
      return calls.filter((call) => call.rows > 0)
    })

  it.live("while claims come back full and the free slots can take two batches, two claims of a batch each run at once", () =>
    withDb(Effect.gen(function*() {
      const claiming = yield* deliverBacklog(120, 40)
      // Most of the backlog came in through claims that overlapped another.
      expect(overlapping(claiming)).toBeGreaterThanOrEqual(claiming.length / 3)
    })), 60_000)

  it.live("with fewer free slots than two batches, claims go one at a time", () =>
    withDb(Effect.gen(function*() {
      const claiming = yield* deliverBacklog(60, 9)
      expect(claiming.length).toBeGreaterThanOrEqual(60 / 5)
      expect(overlapping(claiming)).toBe(0)
    })), 60_000)
})
