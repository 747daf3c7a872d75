import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Runtime from "effect/Runtime"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { type AppSettings, ConfigInvalid, Settings } from "../config/AppConfig.js"
import { type Migration, pendingMigrations, readMigrations } from "../db/Migrator.js"
import { Metrics, type WorkerMetrics } from "./Metrics.js"

/** Where the metrics server listens (the port actually bound, so `0` in tests resolves). */
export class MetricsServer extends Context.Tag("webhook-worker/MetricsServer")<MetricsServer, {
  readonly host: string
  readonly port: number
  readonly url: (path: string) => string
}>() {}

/** The server could not start for a reason other than its address (those are `ConfigInvalid`). */
export class MetricsServerFailed extends Data.TaggedError("MetricsServerFailed")<{
  readonly address: string
  readonly cause: unknown
}> {
  override get message() {
    return `metrics server on ${this.address} failed to start: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
  }
}

export interface MetricsServerOptions {
  readonly host: string
  /** The port to bind; `0` picks a free one (tests). */
  readonly port: number
  /** How the port was chosen, for the one-line error when it is taken (e.g. "METRICS_PORT + 2"). */
  readonly portSource?: string
  /** How long queue gauges are served from cache before the next database read. Default 5 s. */
  readonly queueStatsTtl?: Duration.DurationInput
  /** /healthz fails when the claim loop has not gone round for this long. Default: see `stuckAfterMs`. */
  readonly stuckAfter?: Duration.DurationInput
  /** How long /readyz waits for the database before answering 503. Default 2 s. */
  readonly readyTimeout?: Duration.DurationInput
}

/**
 * How long the claim loop may go without a heartbeat before /healthz calls it stuck. The loop
 * legitimately blocks for up to a poll interval (idle) or one delivery timeout (all slots busy),
 * and beats on every claim retry while the database is down; twice the longer of the two plus
 * 10 s, and never under 30 s, leaves room for a slow claim without hiding a real hang for long.
 */
export const stuckAfterMs = (settings: Pick<AppSettings, "pollIntervalMs" | "deliveryTimeoutMs">) =>
  Math.max(30_000, 2 * Math.max(settings.pollIntervalMs, settings.deliveryTimeoutMs) + 10_000)

/** Delivered rows are counted exactly up to this many; beyond it the planner's estimate is used. */
export const DELIVERED_EXACT_LIMIT = 10_000

/**
 * The queue gauges in one round trip, each part cheap however many delivered rows the table
 * holds: the active statuses are counted through the partial claim index (`idx_wdq_due`, only
 * rows that can become due), dead letters through `idx_wdq_dead_letter`, and the oldest due row
 * is one index probe. Delivered rows are the bulk of the table and only grow, so they are counted
 * exactly only up to DELIVERED_EXACT_LIMIT (the ORDER BY steers it onto `idx_wdq_delivered_at`: at
 * most that many index entries, wherever the rows lie in the heap) and otherwise taken from that
 * index's row estimate, which autovacuum/ANALYZE keep current.
 */
export const QUEUE_STATS_SQL = `
SELECT status, count(*)::float8 AS n FROM webhook_delivery_queue
WHERE status IN ('pending', 'failed', 'processing') GROUP BY status
UNION ALL
SELECT 'dead_letter', count(*)::float8 FROM webhook_delivery_queue WHERE status = 'dead_letter'
UNION ALL
SELECT 'delivered', count(*)::float8
FROM (SELECT 1 FROM webhook_delivery_queue WHERE status = 'delivered' ORDER BY delivered_at LIMIT ${DELIVERED_EXACT_LIMIT + 1}) d
UNION ALL
SELECT 'delivered_estimate', GREATEST(c.reltuples, 0)::float8 FROM pg_class c WHERE c.oid = to_regclass('idx_wdq_delivered_at')
UNION ALL
SELECT 'oldest_due_age', COALESCE(extract(epoch FROM now() - min(next_retry_at)), 0)::float8
FROM webhook_delivery_queue
WHERE status IN ('pending', 'failed', 'processing') AND next_retry_at <= now()`

export interface QueueStats {
  readonly sizes: ReadonlyMap<string, number>
  readonly oldestDueAgeSeconds: number
}

/** Reads the queue gauges (see QUEUE_STATS_SQL for why each part is cheap). */
export const readQueueStats: Effect.Effect<QueueStats, SqlError.SqlError, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql.unsafe<{ status: string; n: number }>(QUEUE_STATS_SQL)
  const values = new Map(rows.map((row) => [row.status, Number(row.n)]))
  const sizes = new Map<string, number>()
  for (const status of ["pending", "processing", "failed", "dead_letter"]) sizes.set(status, values.get(status) ?? 0)
  const delivered = values.get("delivered") ?? 0
  sizes.set(
    "delivered",
    delivered <= DELIVERED_EXACT_LIMIT ? delivered : Math.max(delivered, Math.round(values.get("delivered_estimate") ?? 0))
  )
  return { sizes, oldestDueAgeSeconds: Math.max(0, values.get("oldest_due_age") ?? 0) }
})

export type Readiness =
  | { readonly ready: true }
  | { readonly ready: false; readonly reason: string }

/** Ready when the database answers and every migration on disk is recorded as applied. */
export const checkReadiness = (migrations: ReadonlyArray<Migration>): Effect.Effect<Readiness, never, SqlClient.SqlClient> =>
  pendingMigrations(migrations).pipe(
    Effect.map((pending): Readiness =>
      pending.length === 0
        ? { ready: true }
        : { ready: false, reason: `migrations not applied: ${pending.map((m) => m.name).join(", ")} (run webhook-worker migrate)` }
    ),
    Effect.catchAll((error) => Effect.succeed<Readiness>({ ready: false, reason: `database unreachable: ${sqlErrorText(error)}` }))
  )

// pg's messages name the database, user or address, never the password.
const sqlErrorText = (error: SqlError.SqlError) => {
  const inner = error.cause instanceof Error ? error.cause.message : ""
  return inner === "" ? error.message : `${error.message}: ${inner}`
}

interface Reply {
  readonly status: number
  readonly body: string
  readonly contentType: string
  readonly headers?: Record<string, string>
}

const json = (status: number, body: unknown): Reply => ({
  status,
  body: JSON.stringify(body) + "\n",
  contentType: "application/json"
})

const ROUTES = new Set(["/metrics", "/healthz", "/readyz"])

const listen = (server: Server, host: string, port: number, portSource: string) =>
  Effect.async<AddressInfo, ConfigInvalid | MetricsServerFailed>((resume) => {
    const onError = (error: NodeJS.ErrnoException) => {
      server.off("listening", onListening)
      const address = `${host}:${port}`
      switch (error.code) {
        case "EADDRINUSE":
          return resume(Effect.fail(new ConfigInvalid({
            variable: "METRICS_PORT",
            reason: `${address} is already in use (this instance listens on ${portSource}); stop the other process or choose another METRICS_PORT`
          })))
        case "EACCES":
          return resume(Effect.fail(new ConfigInvalid({
            variable: "METRICS_PORT",
            reason: `not allowed to listen on ${address} (ports below 1024 need privileges; this instance listens on ${portSource})`
          })))
        case "EADDRNOTAVAIL":
        case "ENOTFOUND":
        case "EAI_AGAIN":
          return resume(Effect.fail(new ConfigInvalid({
            variable: "METRICS_HOST",
            reason: `cannot listen on ${host}: not an address of this machine`
          })))
        default:
          return resume(Effect.fail(new MetricsServerFailed({ address, cause: error })))
      }
    }
    const onListening = () => {
      server.off("error", onError)
      resume(Effect.succeed(server.address() as AddressInfo))
    }
    server.once("error", onError)
    server.once("listening", onListening)
    server.listen(port, host)
  })

/**
 * `GET /metrics` (the registry, with queue gauges at most `queueStatsTtl` old), `GET /healthz`
 * (200 while the claim loop goes round; 503 when it has stalled), `GET /readyz` (200 when the
 * database answers and migrations are applied; 503 with the reason otherwise). Scoped: the port
 * is released when the layer's scope closes.
 */
export const layer = (
  options: MetricsServerOptions
): Layer.Layer<MetricsServer, ConfigInvalid | MetricsServerFailed, Metrics | SqlClient.SqlClient | Settings> =>
  Layer.scoped(
    MetricsServer,
    Effect.gen(function*() {
      const metrics = yield* Metrics
      const settings = yield* Settings
      const sql = yield* SqlClient.SqlClient
      // Read once: readiness is about the migrations this build ships with.
      const migrations = yield* readMigrations().pipe(
        Effect.mapError((error) => new MetricsServerFailed({ address: `${options.host}:${options.port}`, cause: error }))
      )
      const readyTimeout = Duration.decode(options.readyTimeout ?? Duration.seconds(2))

      // A burst of scrapes shares one read (concurrent callers wait for the same query) and the
      // result, success or failure, is reused until the TTL passes. A failed or slow read keeps
      // the last values; webhook_queue_stats_refreshed_timestamp_seconds shows their age.
      const refreshQueueGauges = yield* Effect.cachedWithTTL(
        // Disconnected, so a hung query cannot hold the scrape past the timeout.
        Effect.disconnect(readQueueStats).pipe(
          Effect.timeout(readyTimeout),
          Effect.tap((stats) =>
            Effect.sync(() => {
              metrics.queueSize(stats.sizes)
              metrics.oldestDueAge(stats.oldestDueAgeSeconds)
              metrics.queueStatsRefreshed(Date.now())
            })
          ),
          Effect.catchAll((error) =>
            Effect.logDebug("Reading queue gauges failed; serving the last values").pipe(
              Effect.annotateLogs({ error: error._tag === "SqlError" ? sqlErrorText(error) : "timed out" })
            )
          ),
          Effect.asVoid
        ),
        options.queueStatsTtl ?? Duration.seconds(5)
      )

      // Readiness is cached briefly too, so a misconfigured probe cannot flood the database.
      const readiness = yield* Effect.cachedWithTTL(
        Effect.disconnect(checkReadiness(migrations)).pipe(
          Effect.timeoutTo({
            duration: readyTimeout,
            onSuccess: (readiness) => readiness,
            onTimeout: (): Readiness => ({
              ready: false,
              reason: `database unreachable: no answer within ${Duration.format(readyTimeout)}`
            })
          }),
          Effect.provideService(SqlClient.SqlClient, sql)
        ),
        Duration.seconds(1)
      )

      const route = (method: string, path: string): Effect.Effect<Reply> => {
        if (!ROUTES.has(path)) return Effect.succeed(json(404, { error: "not found", paths: [...ROUTES] }))
        if (method !== "GET" && method !== "HEAD") {
          return Effect.succeed({ ...json(405, { error: "method not allowed" }), headers: { allow: "GET, HEAD" } })
        }
        switch (path) {
          case "/metrics":
            return refreshQueueGauges.pipe(
              Effect.zipRight(Effect.promise(() => metrics.registry.metrics())),
              Effect.map((body): Reply => ({ status: 200, body, contentType: metrics.registry.contentType }))
            )
          case "/healthz":
            return Effect.map(settings.get, (current) => health(metrics, options.stuckAfter, current))
          default:
            return Effect.map(readiness, (result) =>
              result.ready ? json(200, { status: "ready" }) : json(503, { status: "not ready", reason: result.reason }))
        }
      }

      const runtime = yield* Effect.runtime<never>()
      const run = Runtime.runFork(runtime)
      const handle = (req: IncomingMessage, res: ServerResponse) => {
        const path = new URL(req.url ?? "/", "http://localhost").pathname
        const method = req.method ?? "GET"
        run(
          route(method, path).pipe(
            Effect.provideService(SqlClient.SqlClient, sql),
            Effect.catchAllCause((cause) =>
              Effect.as(Effect.logWarning("Metrics endpoint failed", cause), json(500, { error: "internal error" }))
            ),
            Effect.tap((reply) =>
              Effect.sync(() => {
                res.writeHead(reply.status, { "content-type": reply.contentType, "cache-control": "no-store", ...reply.headers })
                res.end(method === "HEAD" ? undefined : reply.body)
              })
            ),
            // Scrapes and probes every few seconds would otherwise each leave a trace of SQL spans.
            Effect.withTracerEnabled(false),
            Effect.annotateLogs({ service: "metrics" })
          )
        )
      }

      const server = createServer(handle)
      // Probes are short-lived; an idle keep-alive socket must not hold shutdown up.
      server.keepAliveTimeout = 5_000
      const address = yield* Effect.acquireRelease(
        listen(server, options.host, options.port, options.portSource ?? "METRICS_PORT"),
        () =>
          Effect.async<void>((resume) => {
            server.close(() => resume(Effect.void))
            server.closeAllConnections()
          }).pipe(Effect.timeoutOption(Duration.seconds(2)))
      )
      const host = address.family === "IPv6" ? `[${address.address}]` : address.address
      yield* Effect.logInfo("Metrics server listening").pipe(
        Effect.annotateLogs({ service: "metrics", address: `${host}:${address.port}` })
      )
      return {
        host: address.address,
        port: address.port,
        url: (path: string) => `http://${host}:${address.port}${path}`
      }
    })
  )

const health = (metrics: WorkerMetrics, stuckAfter: Duration.DurationInput | undefined, current: AppSettings): Reply => {
  const limitMs = stuckAfter === undefined ? stuckAfterMs(current) : Duration.toMillis(Duration.decode(stuckAfter))
  const sinceMs = Date.now() - metrics.lastLoopHeartbeatMs()
  const body = { last_loop_seconds_ago: Math.round(sinceMs / 100) / 10, stuck_after_seconds: limitMs / 1000 }
  return sinceMs <= limitMs
    ? json(200, { status: "ok", ...body })
    : json(503, { status: "stuck", reason: "the claim loop has not gone round in time", ...body })
}

/** METRICS_PORT + instance - 1, or a configuration error naming both when it leaves the port range. */
export const portFor = (settings: Pick<AppSettings, "metricsPort">, instance: number): Either.Either<number, ConfigInvalid> => {
  const port = settings.metricsPort + instance - 1
  return port >= 1 && port <= 65535
    ? Either.right(port)
    : Either.left(new ConfigInvalid({
      variable: "METRICS_PORT",
      reason: `${settings.metricsPort} + instance ${instance} - 1 = ${port} is not a port (1 to 65535)`
    }))
}

/**
 * The server as `run` starts it: on METRICS_HOST at METRICS_PORT + instance - 1, or nothing at all
 * when METRICS_ENABLED=false.
 */
export const layerFromSettings = (
  settings: AppSettings,
  instance: number,
  overrides: Omit<MetricsServerOptions, "host" | "port" | "portSource"> = {}
): Layer.Layer<never, ConfigInvalid | MetricsServerFailed, Metrics | SqlClient.SqlClient | Settings> => {
  if (!settings.metricsEnabled) return Layer.empty
  return Either.match(portFor(settings, instance), {
    onLeft: (error) => Layer.fail(error),
    onRight: (port) =>
      Layer.discard(layer({
        ...overrides,
        host: settings.metricsHost,
        port,
        portSource: instance === 1 ? "METRICS_PORT" : `METRICS_PORT + ${instance - 1}, for --instance ${instance}`
      }))
  })
}
