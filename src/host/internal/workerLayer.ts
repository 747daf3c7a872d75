import * as SqlClient from "@effect/sql/SqlClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { type AppSettings, Settings } from "../../config/AppConfig.js"
import * as Metrics from "../../observability/Metrics.js"
import { readQueueStats } from "../../observability/MetricsServer.js"
import * as Stack from "../../worker/Stack.js"
import * as Worker from "../../worker/Worker.js"
import type { SettingsSource } from "../HostConfig.js"
import type { WorkerOptions } from "../WebhookWorker.js"

// Internal: the worker's layers for a host. The public surface is `WebhookWorker.layer` and
// `startWebhookWorker`, which both resolve settings first and then build this.

const DEFAULT_QUEUE_STATS_INTERVAL = Duration.seconds(15)

/**
 * Keeps the queue gauges current while the scope lives. The standalone worker refreshes them
 * when /metrics is scraped; a host serves its registry itself, so they are read on a timer.
 * A failed read leaves the last values (and their refresh timestamp) for the next one.
 */
const queueGauges = (interval: Duration.DurationInput) =>
  Layer.scopedDiscard(
    Effect.gen(function*() {
      const metrics = yield* Metrics.Metrics
      const refresh = readQueueStats.pipe(
        Effect.map((stats) => {
          metrics.queueSize(stats.sizes)
          metrics.oldestDueAge(stats.oldestDueAgeSeconds)
          metrics.queueStatsRefreshed(Date.now())
        }),
        Effect.catchAll((error) =>
          Effect.logDebug("Reading queue sizes failed").pipe(Effect.annotateLogs({ error: error.message }))
        )
      )
      yield* refresh.pipe(Effect.repeat(Schedule.spaced(interval)), Effect.forkScoped)
    })
  )

/**
 * The host's SqlClient without its name transforms: a host may rename result columns
 * (`transformResultNames: String.snakeToCamel`), and the worker's statements read theirs as written.
 */
const untransformed = Layer.effect(SqlClient.SqlClient, Effect.map(SqlClient.SqlClient, (sql) => sql.withoutTransforms()))

/** The worker over settings already resolved (shared by the Effect layer and the Promise API). */
export const layerWith = (settings: AppSettings, options: Omit<WorkerOptions, keyof SettingsSource> = {}) => {
  const tracing = options.tracing === true
  const metrics = options.metrics
  // One layer value for both uses: layers are memoised by reference, so the gauges and the worker share it.
  const metricsLayer = metrics === undefined
    ? Metrics.layerDetached
    : Metrics.layer({
      ...(metrics.registry !== undefined ? { registry: metrics.registry } : {}),
      tenantLabels: metrics.tenantLabels ?? true,
      processMetrics: metrics.processMetrics ?? false
    })
  const stack = Stack.layer({
    settings: Settings.layer(settings),
    metrics: metricsLayer,
    instance: options.instance ?? 1,
    notifications: options.notifications !== false,
    migrate: options.migrate !== false
  })
  const worker = metrics === undefined
    ? stack
    : Layer.merge(stack, queueGauges(metrics.queueStatsInterval ?? DEFAULT_QUEUE_STATS_INTERVAL).pipe(Layer.provide(metricsLayer)))
  return worker.pipe(
    Layer.provide(Layer.succeed(Worker.TraceDeliveries, tracing)),
    Layer.provide(untransformed),
    // Every line the worker writes (its fibers and finalizers inherit this) names the instance,
    // as `webhook-worker run --instance N` does, whichever logger the host runs.
    Layer.annotateLogs({ instance: options.instance ?? 1 })
  )
}
