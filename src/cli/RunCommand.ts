import { Effect, Layer, Option } from "effect"
import { requireEncryptionKey } from "../config/AppConfig.js"
import * as LiveSettings from "../config/LiveSettings.js"
import { databaseFor } from "../db/Connect.js"
import { ensureMigrated } from "../db/Migrator.js"
import * as DeliveryHttp from "../http/DeliveryHttp.js"
import * as Log from "../observability/Log.js"
import * as Metrics from "../observability/Metrics.js"
import * as MetricsServer from "../observability/MetricsServer.js"
import * as Telemetry from "../observability/Telemetry.js"
import { version } from "../PackageInfo.js"
import { DeliveryQueue } from "../queue/DeliveryQueue.js"
import * as Wakeup from "../worker/Wakeup.js"
import * as Worker from "../worker/Worker.js"
import { settingsFrom } from "./Common.js"

/** `webhook-worker run`: the worker, its metrics server and telemetry, composed over live settings. */
export const runWorker = (instanceNumber: number, file: Option.Option<string>) => {
  // One threshold for the logger and for SIGHUP, so a changed LOG_LEVEL applies without a restart.
  const threshold = new Log.LogThreshold("INFO")
  return Effect.gen(function*() {
    const settings = yield* settingsFrom(file)
    yield* requireEncryptionKey(settings)
    const database = yield* databaseFor(settings, "worker")
    const live = LiveSettings.layer(settings, settingsFrom(file), (next) => threshold.set(next.logLevel))
    const metrics = Metrics.layer({ tenantLabels: settings.metricsTenantLabels, processMetrics: settings.metricsEnabled })
    const migrated = Layer.effectDiscard(
      ensureMigrated.pipe(
        Effect.tap((applied) => (applied.length > 0 ? Effect.logInfo("Applied migrations").pipe(Effect.annotateLogs({ applied: applied.join(",") })) : Effect.void))
      )
    )
    const app = Worker.layer.pipe(
      Layer.provide(Layer.mergeAll(
        DeliveryQueue.layer,
        DeliveryHttp.layer({ tracing: Telemetry.isEnabled(settings) }),
        database.notifications ? Wakeup.layerListen : Wakeup.polling,
        // A dependency of the worker, so a taken METRICS_PORT fails before any row is claimed.
        MetricsServer.layerFromSettings(settings, instanceNumber).pipe(Layer.provideMerge(metrics)),
        Worker.WorkerIdentity.layer(instanceNumber)
      )),
      Layer.provide(live),
      Layer.provide(migrated),
      Layer.provide(database.layer),
      // Outermost: the tracer is in place before anything else is built.
      Layer.provide(Telemetry.layer(settings, instanceNumber))
    )
    yield* Effect.logInfo("Starting webhook-worker").pipe(
      Effect.annotateLogs({ version, instance: instanceNumber, database: database.description })
    )
    yield* database.banner
    return yield* Layer.launch(app)
  }).pipe((effect) =>
    Effect.flatMap(settingsFrom(file).pipe(Effect.option), (settings) => {
      const format = Option.match(settings, { onNone: () => "json" as const, onSome: (s) => s.logFormat })
      threshold.set(Option.match(settings, { onNone: () => "INFO" as const, onSome: (s) => s.logLevel }))
      return Effect.provide(effect, Log.layer(format, threshold, undefined, { instance: instanceNumber }))
    })
  )
}
