import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { Settings } from "../config/AppConfig.js"
import { ensureMigrated } from "../db/Migrator.js"
import * as DeliveryHttp from "../http/DeliveryHttp.js"
import type { Metrics } from "../observability/Metrics.js"
import { DeliveryQueue } from "../queue/DeliveryQueue.js"
import * as Wakeup from "./Wakeup.js"
import * as Worker from "./Worker.js"

/** Applies pending migrations (a read when up to date, so a role without DDL rights can run). */
export const migrated = Layer.effectDiscard(
  ensureMigrated.pipe(
    Effect.tap((applied) =>
      applied.length > 0
        ? Effect.logInfo("Applied migrations").pipe(Effect.annotateLogs({ applied: applied.join(",") }))
        : Effect.void
    )
  )
)

export interface StackOptions<ES, RS, EM, RM> {
  /** Fixed settings (a host) or live ones that SIGHUP reloads (the CLI). */
  readonly settings: Layer.Layer<Settings, ES, RS>
  /** Where the worker counts: a registry served by the metrics server, or the host's own. */
  readonly metrics: Layer.Layer<Metrics, EM, RM>
  readonly instance: number
  /** LISTEN/NOTIFY wake-ups; polling only when false (embedded database, pooling proxies). */
  readonly notifications: boolean
  readonly migrate: boolean
}

/**
 * The worker and everything it runs on except the database client: the one composition behind
 * `webhook-worker run` and the host API's worker layer. Whether attempts are traced is the
 * caller's `TraceDeliveries` (off unless provided).
 */
export const layer = <ES, RS, EM, RM>(options: StackOptions<ES, RS, EM, RM>) =>
  Worker.layer.pipe(
    Layer.provide(Layer.mergeAll(
      DeliveryQueue.layer,
      DeliveryHttp.layer,
      options.notifications ? Wakeup.layerListen : Wakeup.polling,
      options.metrics,
      Worker.WorkerIdentity.layer(options.instance)
    )),
    Layer.provide(options.settings),
    Layer.provide(options.migrate ? migrated : Layer.empty)
  )
