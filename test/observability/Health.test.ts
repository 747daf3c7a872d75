import { it } from "@effect/vitest"
import type { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Cause, Effect, Either, Exit, Layer, Option, Redacted, type Scope } from "effect"
import { describe, expect } from "vitest"
import { type AppSettings, defaults, Settings } from "../../src/config/AppConfig.js"
import { migrate, readMigrations } from "../../src/db/Migrator.js"
import * as Metrics from "../../src/observability/Metrics.js"
import * as MetricsServer from "../../src/observability/MetricsServer.js"
import { freePort } from "../utils/Ports.js"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg, testDatabase } from "../utils/TestDatabase.js"
import { databaseUrl } from "../utils/urls.js"
import { eventually, insertRaw, statusIs, testSettings } from "../utils/WorkerHarness.js"
import { admin, currentDatabase, get, start, startServer, waitFor, workerLayer } from "./support.js"

const scoped = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

const status = (url: string) => Effect.map(get(url), (result) => ({ status: result.status, body: JSON.parse(result.body) as Record<string, unknown> }))

/** A free loopback port (bound, then released). */

/** A database of the test server without any migrations applied, dropped at the end of the scope. */
const emptyDatabase = Effect.acquireRelease(
  Effect.gen(function*() {
    const name = `ww_obs_empty_${process.pid}_${Date.now().toString(36)}`
    yield* admin((client) => client.query(`CREATE DATABASE ${name}`))
    return name
  }),
  (name) => admin((client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
)

const pgOn = (name: string) => PgClient.layer({ url: Redacted.make(databaseUrl(name)), maxConnections: 2 })

describe("/healthz and /readyz", () => {
  it.live("with a running worker both are 200; while the database refuses connections /readyz is 503 and /healthz stays 200; both recover", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      // Claim retries back off to at most 5 s apart and each one beats: 6 s cannot pass without one.
      const { server, stop: stopServer } = yield* startServer(metrics, { stuckAfter: "6 seconds" })
      const { stop: stopWorker } = yield* start(workerLayer({ metrics }))

      expect(yield* status(server.url("/healthz"))).toMatchObject({ status: 200, body: { status: "ok", stuck_after_seconds: 6 } })
      expect(yield* status(server.url("/readyz"))).toEqual({ status: 200, body: { status: "ready" } })
      expect((yield* get(server.url("/nope"))).status).toBe(404)
      const post = yield* get(server.url("/metrics"), { method: "POST" })
      expect(post.status).toBe(405)
      expect(post.headers.get("allow")).toBe("GET, HEAD")
      const head = yield* get(server.url("/readyz"), { method: "HEAD" })
      expect([head.status, head.body]).toEqual([200, ""])

      const name = yield* currentDatabase
      yield* admin(async (client) => {
        await client.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`)
        await client.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [name])
      })
      const down = yield* waitFor(
        Effect.map(status(server.url("/readyz")), (r) => (r.status === 503 ? r : undefined)),
        "/readyz to go 503"
      )
      expect(down.body.status).toBe("not ready")
      expect(String(down.body.reason)).toMatch(/^database unreachable: .*not currently accepting connections/)
      expect(String(down.body.reason)).not.toContain("postgres:postgres")

      // The claim loop keeps retrying; that is waiting, not being stuck.
      const deadline = Date.now() + 7_500
      while (Date.now() < deadline) {
        const health = yield* status(server.url("/healthz"))
        expect(health.status).toBe(200)
        yield* Effect.sleep("500 millis")
      }

      yield* admin((client) => client.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`))
      yield* waitFor(Effect.map(status(server.url("/readyz")), (r) => (r.status === 200 ? r : undefined)), "/readyz back to 200")
      // And the worker picks up where it left off.
      const id = yield* insertRaw({ url: receiver.url() })
      yield* eventually(statusIs(id, "delivered"), "delivered after the outage")
      yield* stopWorker
      yield* stopServer
    })))

  it.live("/healthz stays 200 while slow endpoints hold every slot and claimed rows wait their turn", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 9000 })
      for (let i = 0; i < 6; i++) yield* insertRaw({ url: receiver.url() })
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop: stopServer } = yield* startServer(metrics, { stuckAfter: "6 seconds" })
      // One slot, held 9 s; rows claimed ahead wait for it and no claim is due meanwhile.
      const { stop: stopWorker } = yield* start(workerLayer({
        metrics,
        settings: { maxConcurrentDeliveries: 1, batchSize: 6, deliveryTimeoutMs: 10_000, leaseMs: 60_000 }
      }))
      yield* receiver.waitForRequests(1)
      const deadline = Date.now() + 8_000
      while (Date.now() < deadline) {
        expect((yield* status(server.url("/healthz"))).status).toBe(200)
        yield* Effect.sleep("500 millis")
      }
      expect(receiver.requests).toHaveLength(1)
      yield* stopWorker
      yield* stopServer
    })), 30_000)

  it.live("/healthz is 503 once the claim loop stops going round, and 200 again when it does", () =>
    scoped(Effect.gen(function*() {
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop: stopServer } = yield* startServer(metrics, { stuckAfter: "1 second" })
      const { stop: stopWorker } = yield* start(workerLayer({ metrics }))
      yield* Effect.sleep("1200 millis")
      expect((yield* status(server.url("/healthz"))).status).toBe(200)

      yield* stopWorker
      const stuck = yield* waitFor(
        Effect.map(status(server.url("/healthz")), (r) => (r.status === 503 ? r : undefined)),
        "/healthz to go 503",
        5_000
      )
      expect(stuck.body).toMatchObject({ status: "stuck", stuck_after_seconds: 1 })
      expect(Number(stuck.body.last_loop_seconds_ago)).toBeGreaterThanOrEqual(1)

      metrics.loopHeartbeat()
      expect((yield* status(server.url("/healthz"))).status).toBe(200)
      yield* stopServer
    })))

  it.live("/readyz is 503 on a database without the migrations and 200 once they are applied", () =>
    Effect.gen(function*() {
      const name = yield* emptyDatabase
      yield* Effect.gen(function*() {
        const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
        const { server, stop } = yield* startServer(metrics)
        const before = yield* status(server.url("/readyz"))
        expect(before.status).toBe(503)
        expect(String(before.body.reason)).toMatch(/^migrations not applied: 0001_schema/)
        // /metrics still answers (gauges keep their last values while the read fails).
        expect((yield* get(server.url("/metrics"))).status).toBe(200)

        yield* Effect.flatMap(readMigrations(), migrate)
        yield* waitFor(Effect.map(status(server.url("/readyz")), (r) => (r.status === 200 ? r : undefined)), "/readyz 200 after migrate")
        yield* stop
      }).pipe(Effect.provide(pgOn(name)))
    }).pipe(Effect.scoped, Effect.orDie))

  it.live("/readyz is 503 when its database has been dropped", () =>
    Effect.gen(function*() {
      const { name } = yield* testDatabase
      yield* Effect.gen(function*() {
        const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
        const { server, stop } = yield* startServer(metrics)
        expect((yield* status(server.url("/readyz"))).status).toBe(200)
        yield* admin((client) => client.query(`DROP DATABASE ${name} WITH (FORCE)`))
        const gone = yield* waitFor(
          Effect.map(status(server.url("/readyz")), (r) => (r.status === 503 ? r : undefined)),
          "/readyz to go 503"
        )
        expect(String(gone.body.reason)).toMatch(/^database unreachable: .*does not exist/)
        expect((yield* status(server.url("/healthz"))).status).toBe(200)
        yield* stop
      }).pipe(Effect.provide(pgOn(name)))
    }).pipe(Effect.scoped))
})

describe("where the server listens", () => {
  const build = (port: number, instance: number, enabled = true) => {
    const settings: AppSettings = { ...defaults, ...testSettings(), metricsEnabled: enabled, metricsHost: "127.0.0.1", metricsPort: port }
    return start(MetricsServer.layerFromSettings(settings, instance).pipe(
      Layer.provide(Layer.mergeAll(
        Layer.sync(Metrics.Metrics, () => Metrics.make({ tenantLabels: true, processMetrics: false })),
        Settings.layer(settings)
      ))
    ))
  }

  it.live("instance N listens on METRICS_PORT + N - 1; METRICS_ENABLED=false opens no port", () =>
    scoped(Effect.gen(function*() {
      const port = yield* freePort
      const { stop } = yield* build(port - 2, 3)
      expect((yield* status(`http://127.0.0.1:${port}/healthz`)).status).toBe(200)
      yield* stop

      const { stop: stopDisabled } = yield* build(port - 2, 3, false)
      const refused = yield* Effect.tryPromise(() => fetch(`http://127.0.0.1:${port}/metrics`)).pipe(Effect.either)
      expect(Either.isLeft(refused)).toBe(true)
      yield* stopDisabled

      expect(MetricsServer.portFor({ metricsPort: 65535 }, 2)).toEqual(Either.left(expect.objectContaining({ variable: "METRICS_PORT" })))
    })))

  it.live("a port already in use fails with one line naming METRICS_PORT", () =>
    scoped(Effect.gen(function*() {
      const metrics = Metrics.make({ tenantLabels: true, processMetrics: false })
      const { server, stop } = yield* startServer(metrics)

      for (const [base, instance, source] of [[server.port, 1, "METRICS_PORT"], [server.port - 1, 2, "METRICS_PORT + 1, for --instance 2"]] as const) {
        const exit = yield* Effect.exit(build(base, instance))
        expect(Exit.isFailure(exit)).toBe(true)
        const error = Option.getOrThrow(Cause.failureOption((exit as Exit.Failure<unknown, { _tag: string; variable: string; message: string }>).cause))
        expect(error._tag).toBe("ConfigInvalid")
        expect(error.variable).toBe("METRICS_PORT")
        expect(error.message).toBe(
          `METRICS_PORT: 127.0.0.1:${server.port} is already in use (this instance listens on ${source}); stop the other process or choose another METRICS_PORT`
        )
        expect(error.message).not.toContain("\n")
      }
      // The first server is unaffected.
      expect((yield* status(server.url("/healthz"))).status).toBe(200)
      yield* stop
    })))
})
