import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { requireEncryptionKey } from "../config/AppConfig.js"
import * as LiveSettings from "../config/LiveSettings.js"
import { databaseFor } from "../db/Connect.js"
import * as Log from "../observability/Log.js"
import * as Metrics from "../observability/Metrics.js"
import * as MetricsServer from "../observability/MetricsServer.js"
import * as Telemetry from "../observability/Telemetry.js"
import { version } from "../PackageInfo.js"
import * as Stack from "../worker/Stack.js"
import { settingsFrom } from "./Common.js"

/** `webhook-worker run`: the worker, its metrics server and telemetry, composed over live settings. */
export const runWorker = (instanceNumber: number, files: ReadonlyArray<string>) => {
  // One threshold for the logger and for SIGHUP, so a changed LOG_LEVEL applies without a restart.
  const threshold = new Log.LogThreshold("INFO")
  return Effect.gen(function*() {
    const held = yield* LiveSettings.holdHangups
    const settings = yield* settingsFrom(files)
    yield* requireEncryptionKey(settings)
    const database = yield* databaseFor(settings, "worker")
    const live = LiveSettings.layer(settings, settingsFrom(files), (next) => threshold.set(next.logLevel), held)
    const metrics = Metrics.layer({ tenantLabels: settings.metricsTenantLabels, processMetrics: settings.metricsEnabled })
    const app = Stack.layer({
      settings: live,
      // The server is built with the metrics, so a taken METRICS_PORT fails before any row is claimed.
      metrics: MetricsServer.layerFromSettings(settings, instanceNumber).pipe(Layer.provideMerge(metrics)),
      instance: instanceNumber,
      notifications: database.notifications,
      migrate: true
    }).pipe(
      Layer.provide(database.layer),
      // Outermost: the tracer is in place before anything else is built.
      Layer.provide(Telemetry.layer(settings, instanceNumber))
    )
    yield* Effect.logInfo("Starting webhook-worker").pipe(
      Effect.annotateLogs({ version, instance: instanceNumber, database: database.description })
    )
    yield* database.banner
    return yield* Layer.launch(app)
  }).pipe(Effect.scoped, (effect) =>
    Effect.flatMap(settingsFrom(files).pipe(Effect.option), (settings) => {
      const format = Option.match(settings, { onNone: () => "json" as const, onSome: (s) => s.logFormat })
      threshold.set(Option.match(settings, { onNone: () => "INFO" as const, onSome: (s) => s.logLevel }))
      return Effect.provide(effect, Log.layer(format, threshold, undefined, { instance: instanceNumber }))
    })
  )
}
