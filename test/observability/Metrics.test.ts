import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { PgClient as Pg } from "@effect/sql-pg"
import { Effect, Layer, Option, Redacted, type Scope } from "effect"
import { describe, expect } from "vitest"
import * as Metrics from "../../src/observability/Metrics.js"
import { DELIVERED_EXACT_LIMIT, QUEUE_STATS_SQL, readQueueStats } from "../../src/observability/MetricsServer.js"
import { spawnCli } from "../utils/Cli.js"
import { freePort } from "../utils/Ports.js"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg, TestDb } from "../utils/TestDatabase.js"
import { eventually, insertRaw, statusIs, TEST_KEY } from "../utils/WorkerHarness.js"
import { enqueue, get, insertEndpoint, insertForEndpoint, parseSamples, request, sample, scrape, start, startServer, waitFor, workerLayer } from "./support.js"

const scoped = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

/** The same, also giving the database's URL (for a worker process). */
const withDb = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | TestDb | Scope.Scope>) =>
  Effect.gen(function*() {
    const db = yield* TestDb
    return yield* effect.pipe(Effect.provide(Pg.layer({ url: Redacted.make(db.url), maxConnections: 2 })))
  }).pipe(Effect.provide(Layer.fresh(TestDb.Default)), Effect.scoped)

describe("GET /metrics", () => {
  it.live("counters, histogram and queue gauges move with real deliveries (delivered, retried, dead-lettered)", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const seen = new Map<string, number>()
      receiver.respond = (request) => {
        const n = (seen.get(request.path) ?? 0) + 1
        seen.set(request.path, n)
        if (request.path === "/flaky") return n === 1 ? { status: 503 } : { status: 200 }
        if (request.path === "/bad") return { status: 400 }
        if (request.path === "/down") return { status: 500 }
        return { status: 204 }
      }
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: true })
      const { server, stop: stopServer } = yield* startServer(metrics, { queueStatsTtl: "100 millis" })

      // Before the worker runs: rows waiting, nothing delivered yet.
      const ok = yield* insertRaw({ url: receiver.url("/ok"), userId: "user_1" })
      const flaky = yield* enqueue({ url: receiver.url("/flaky"), userId: "user_2" })
      const bad = yield* enqueue({ url: receiver.url("/bad"), userId: "user_3" })
      const down = yield* enqueue({ url: receiver.url("/down"), userId: "user_4", maxAttempts: 2 })
      const endpoint = yield* insertEndpoint(receiver.url("/partner"), "partner_secret", "user_5")
      const viaEndpoint = yield* insertForEndpoint(endpoint, "user_5")
      yield* Effect.sleep("50 millis")
      const before = yield* scrape(server)
      expect(before.contentType).toMatch(/^text\/plain; version=0\.0\.4/)
      expect(sample(before.samples, "webhook_queue_size", { status: "pending" })).toBe(5)
      expect(sample(before.samples, "webhook_queue_size", { status: "delivered" })).toBe(0)
      expect(sample(before.samples, "webhook_queue_oldest_due_age_seconds")).toBeGreaterThan(0)
      expect(sample(before.samples, "webhook_queue_stats_refreshed_timestamp_seconds")).toBeGreaterThan(Date.now() / 1000 - 60)
      expect(before.samples.some((s) => s.name === "webhooks_delivered_total")).toBe(false)

      const { stop: stopWorker } = yield* start(workerLayer({ metrics }))
      for (const id of [ok, flaky, viaEndpoint]) yield* eventually(statusIs(id, "delivered"), `${id} delivered`)
      for (const id of [bad, down]) yield* eventually(statusIs(id, "dead_letter"), `${id} dead-lettered`)
      yield* stopWorker
      yield* Effect.sleep("150 millis") // past the gauge cache

      const after = yield* scrape(server)
      const s = after.samples
      expect(sample(s, "webhooks_delivered_total", { user_id: "user_1", partner_id: "" })).toBe(1)
      expect(sample(s, "webhooks_delivered_total", { user_id: "user_2", partner_id: "" })).toBe(1)
      expect(sample(s, "webhooks_delivered_total", { user_id: "user_5", partner_id: endpoint })).toBe(1)
      // flaky's first attempt and both of down's are 5xx; bad's one attempt is a 4xx.
      expect(sample(s, "webhooks_failed_total", { reason: "http_5xx" })).toBe(3)
      expect(sample(s, "webhooks_failed_total", { reason: "http_4xx" })).toBe(1)
      expect(sample(s, "webhooks_dead_lettered_total", { reason: "http_4xx" })).toBe(1)
      expect(sample(s, "webhooks_dead_lettered_total", { reason: "http_5xx" })).toBe(1)
      expect(sample(s, "webhook_retries_scheduled_total")).toBe(2)
      expect(sample(s, "webhook_rows_claimed_total")).toBe(7)
      expect(sample(s, "webhook_deliveries_in_flight")).toBe(0)
      expect(sample(s, "webhook_delivery_duration_seconds_count", { outcome: "delivered" })).toBe(3)
      expect(sample(s, "webhook_delivery_duration_seconds_count", { outcome: "failed" })).toBe(2)
      expect(sample(s, "webhook_delivery_duration_seconds_count", { outcome: "dead_letter" })).toBe(2)
      expect(sample(s, "webhook_delivery_duration_seconds_bucket", { outcome: "delivered", le: "0.005" })).toBeDefined()
      expect(sample(s, "webhook_delivery_duration_seconds_bucket", { outcome: "delivered", le: "30" })).toBe(3)
      expect(sample(s, "webhook_delivery_duration_seconds_sum", { outcome: "delivered" })).toBeGreaterThan(0)
      expect(sample(s, "webhook_queue_size", { status: "pending" })).toBe(0)
      expect(sample(s, "webhook_queue_size", { status: "delivered" })).toBe(3)
      expect(sample(s, "webhook_queue_size", { status: "dead_letter" })).toBe(2)
      expect(sample(s, "webhook_queue_oldest_due_age_seconds")).toBe(0)
      expect(sample(s, "webhook_worker_loop_heartbeat_timestamp_seconds")).toBeGreaterThan(Date.now() / 1000 - 10)
      // Node's default process metrics.
      expect(sample(s, "process_cpu_user_seconds_total")).toBeGreaterThan(0)
      expect(s.some((x) => x.name === "nodejs_eventloop_lag_seconds")).toBe(true)
      expect(after.text).toContain("# TYPE webhooks_delivered_total counter")
      expect(after.text).toContain("# TYPE webhook_delivery_duration_seconds histogram")
      expect(after.text).toContain("# TYPE webhook_queue_size gauge")
      yield* stopServer
    })))

  it.live("queue gauges are cached: a burst of scrapes inside the TTL reads the database once", () =>
    scoped(Effect.gen(function*() {
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop } = yield* startServer(metrics, { queueStatsTtl: "1 second" })
      yield* insertRaw({ url: "http://127.0.0.1:9/a" })
      const first = yield* scrape(server)
      expect(sample(first.samples, "webhook_queue_size", { status: "pending" })).toBe(1)
      const refreshedAt = sample(first.samples, "webhook_queue_stats_refreshed_timestamp_seconds")

      // Inside the TTL a new row is not seen, however many scrapes arrive at once.
      yield* insertRaw({ url: "http://127.0.0.1:9/b" })
      const burst = yield* Effect.all(Array.from({ length: 25 }, () => scrape(server)), { concurrency: "unbounded" })
      for (const result of burst) {
        expect(sample(result.samples, "webhook_queue_size", { status: "pending" })).toBe(1)
        expect(sample(result.samples, "webhook_queue_stats_refreshed_timestamp_seconds")).toBe(refreshedAt)
      }

      // After it, the next scrape reads again.
      yield* Effect.sleep("1100 millis")
      const later = yield* scrape(server)
      expect(sample(later.samples, "webhook_queue_size", { status: "pending" })).toBe(2)
      expect(sample(later.samples, "webhook_queue_stats_refreshed_timestamp_seconds")).toBeGreaterThan(refreshedAt!)
      yield* stop
    })))

  it.live("webhook_deliveries_in_flight counts a delivery while the receiver holds it open, and is 0 once it is answered", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      let release = false
      receiver.respond = () => ({ status: 200, delayMs: release ? 0 : 1500 })
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop: stopServer } = yield* startServer(metrics)
      const held = yield* insertRaw({ url: receiver.url("/held") })
      const { stop } = yield* start(workerLayer({ metrics }))
      yield* receiver.waitForRequests(1)
      const during = yield* scrape(server)
      expect(yield* statusIs(held, "processing")).toBeDefined()
      expect(sample(during.samples, "webhook_deliveries_in_flight")).toBe(1)
      release = true
      yield* eventually(statusIs(held, "delivered"), "held delivery answered")
      const after = yield* waitFor(
        Effect.map(scrape(server), (result) => (sample(result.samples, "webhook_deliveries_in_flight") === 0 ? result : undefined)),
        "in-flight back to 0",
        5000
      )
      expect(sample(after.samples, "webhooks_delivered_total", { user_id: "test_user_id" })).toBe(1)
      yield* stop
      yield* stopServer
    })))

  it.live("webhook_rows_claimed_ahead counts the claimed rows waiting for a slot, and is 0 once the worker stops", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 1500 })
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop: stopServer } = yield* startServer(metrics)
      for (let i = 0; i < 4; i++) yield* insertRaw({ url: receiver.url() })
      const { stop } = yield* start(workerLayer({ metrics, settings: { maxConcurrentDeliveries: 1, batchSize: 4 } }))
      yield* receiver.waitForRequests(1)
      const during = yield* scrape(server)
      expect(sample(during.samples, "webhook_deliveries_in_flight")).toBe(1)
      expect(sample(during.samples, "webhook_rows_claimed_ahead")).toBe(3)
      yield* stop
      const after = yield* scrape(server)
      expect(sample(after.samples, "webhook_rows_claimed_ahead")).toBe(0)
      // Stopping sent none of the waiting rows: only the one in flight went out.
      expect(receiver.requests).toHaveLength(1)
      yield* stopServer
    })))

  it.live("webhook_leases_reclaimed_total counts a processing row whose lease expired, claimed again by the worker", () =>
    scoped(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop: stopServer } = yield* startServer(metrics)
      // A dead worker's claim, its lease over; and an ordinary pending row beside it.
      const [orphan] = yield* sql<{ id: string }>`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, locked_by, locked_until, next_retry_at)
        VALUES (${receiver.url("/orphan")}, 's', 'e', '{}', 'processing', 1, 'dead-worker', now() - interval '1 second', now() - interval '1 second')
        RETURNING id::text`
      const fresh = yield* insertRaw({ url: receiver.url("/fresh") })
      const idle = yield* scrape(server)
      expect(sample(idle.samples, "webhook_leases_reclaimed_total")).toBe(0)

      const { stop } = yield* start(workerLayer({ metrics }))
      for (const id of [orphan!.id, fresh]) yield* eventually(statusIs(id, "delivered"), `${id} delivered`)
      yield* stop
      const { samples } = yield* scrape(server)
      expect(sample(samples, "webhook_leases_reclaimed_total")).toBe(1)
      expect(sample(samples, "webhook_rows_claimed_total")).toBe(2)
      yield* stopServer
    }).pipe(Effect.orDie)))

  it.live("METRICS_TENANT_LABELS=false in the environment of `webhook-worker run` drops the tenant labels from its /metrics", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      const port = yield* freePort
      const ids = [yield* insertRaw({ url: receiver.url(), userId: "tenant_a" }), yield* insertRaw({ url: receiver.url(), userId: "tenant_b" })]
      const worker = yield* spawnCli(["run"], {
        DATABASE_URL: db.url,
        WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
        WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
        METRICS_PORT: String(port),
        METRICS_TENANT_LABELS: "false"
      })
      for (const id of ids) yield* eventually(statusIs(id, "delivered"), "delivered", 30_000)
      const metricsUrl = `http://127.0.0.1:${port}/metrics`
      const samples = yield* waitFor(
        Effect.map(request(metricsUrl).pipe(Effect.option), (r) => (Option.isSome(r) && r.value.status === 200 ? parseSamples(r.value.body) : undefined)),
        "the worker's /metrics"
      )
      expect(samples.filter((s) => s.name === "webhooks_delivered_total")).toEqual([{ name: "webhooks_delivered_total", labels: {}, value: 2 }])
      const text = (yield* get(metricsUrl)).body
      expect(text).not.toMatch(/user_id=|partner_id=|tenant_a|tenant_b/)
      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
    }).pipe(Effect.orDie)), 60_000)

  it.live("METRICS_TENANT_LABELS=false drops user_id and partner_id from the delivered counter", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const metrics = Metrics.make({ tenantLabels: false, processMetrics: false })
      const { server, stop: stopServer } = yield* startServer(metrics)
      const idle = yield* scrape(server)
      expect(sample(idle.samples, "webhooks_delivered_total", {})).toBe(0)

      const ids = [yield* insertRaw({ url: receiver.url(), userId: "tenant_a" }), yield* insertRaw({ url: receiver.url(), userId: "tenant_b" })]
      const { stop } = yield* start(workerLayer({ metrics }))
      for (const id of ids) yield* eventually(statusIs(id, "delivered"), "delivered")
      yield* stop
      const { samples, text } = yield* scrape(server)
      const delivered = samples.filter((s) => s.name === "webhooks_delivered_total")
      expect(delivered).toEqual([{ name: "webhooks_delivered_total", labels: {}, value: 2 }])
      expect(text).not.toMatch(/user_id=|partner_id=|tenant_a|tenant_b/)
      yield* stopServer
    })))

  it.live("the queue read stays bounded on a table of delivered rows: exact up to the limit, then the index estimate", () =>
    scoped(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rows = DELIVERED_EXACT_LIMIT * 2 + 500
      yield* sql.unsafe(`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, delivered_at)
        SELECT 'http://127.0.0.1:9/x', 's', 'e', '{}'::json, 'delivered', now() FROM generate_series(1, ${rows})`)
      yield* sql.unsafe(`INSERT INTO webhook_delivery_queue (url, secret, event_type, payload) VALUES ('http://127.0.0.1:9/y', 's', 'e', '{}'::json)`)
      yield* sql.unsafe(`ANALYZE webhook_delivery_queue`)
      const stats = yield* readQueueStats
      expect(stats.sizes.get("pending")).toBe(1)
      // Beyond the exact limit the planner's row estimate for idx_wdq_delivered_at stands in.
      expect(stats.sizes.get("delivered")).toBeGreaterThan(rows * 0.9)
      expect(stats.sizes.get("delivered")).toBeLessThan(rows * 1.1)

      // No part of the statement walks the delivered rows in full: no plan node returns or
      // filters away more rows than the exact-count limit.
      const plan = yield* sql.unsafe<{ "QUERY PLAN": string }>(`EXPLAIN (ANALYZE, FORMAT TEXT) ${QUEUE_STATS_SQL}`)
      const text = plan.map((line) => line["QUERY PLAN"]).join("\n")
      const returned = [...text.matchAll(/actual time=[\d.]+\.\.[\d.]+ rows=(\d+)/g)].map((m) => Number(m[1]))
      const filtered = [...text.matchAll(/Rows Removed by (?:Filter|Index Recheck): (\d+)/g)].map((m) => Number(m[1]))
      expect(returned.length).toBeGreaterThan(0)
      expect(Math.max(...returned, ...filtered)).toBeLessThanOrEqual(DELIVERED_EXACT_LIMIT + 1)
    }).pipe(Effect.orDie)))
})
