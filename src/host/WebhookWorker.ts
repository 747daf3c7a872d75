import type * as SqlClient from "@effect/sql/SqlClient"
import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Prom from "prom-client"
import type { ConfigInvalid } from "../config/AppConfig.js"
import type { MigrateError } from "../db/Migrator.js"
import { requireKey, resolve, type SettingsSource } from "./HostConfig.js"
import { layerWith } from "./internal/workerLayer.js"

export type { SettingsSource, WorkerSettings } from "./HostConfig.js"

/** Prometheus metrics registered into the host's own registry (SPEC.md "Metrics" names). */
export interface WorkerMetricsOptions {
  /** The host's registry (the one it already serves on /metrics); a fresh one otherwise. */
  readonly registry?: Prom.Registry | undefined
  /** Keep `user_id`/`partner_id` labels on `webhooks_delivered_total` (default true). */
  readonly tenantLabels?: boolean | undefined
  /**
   * Also collect Node's default process metrics into the registry (default false: a host with a
   * registry usually collects them already, and registering them twice throws).
   */
  readonly processMetrics?: boolean | undefined
  /** How often `webhook_queue_size` and the oldest-due age are read from the database (default 15 s). */
  readonly queueStatsInterval?: Duration.DurationInput | undefined
}

export interface WorkerOptions extends SettingsSource {
  /** Names the worker in `locked_by` (with host name and pid), like `run --instance N`. Default 1. */
  readonly instance?: number | undefined
  /** Opt-in metrics. Without them the worker counts into a private registry nobody scrapes. */
  readonly metrics?: WorkerMetricsOptions | undefined
  /**
   * One span per delivery attempt (linked to the producer's span) and a `traceparent` header to
   * the receiver, exported by the tracer of the host runtime (e.g. its `NodeSdk.layer`).
   * Default false.
   */
  readonly tracing?: boolean | undefined
  /**
   * LISTEN for new rows on a dedicated connection, so deliveries start at once (default true).
   * Turn off behind a transaction-pooling proxy; the worker then polls every `pollInterval`.
   */
  readonly notifications?: boolean | undefined
  /** Apply pending schema migrations before starting (default true; a read when up to date). */
  readonly migrate?: boolean | undefined
}

export type WorkerLayerError = ConfigInvalid | MigrateError

/**
 * The webhook worker, for a host to compose into its runtime with its own PgClient layer. It
 * claims and delivers while the layer's scope is open; when the scope closes it stops claiming,
 * lets in-flight deliveries finish (up to `shutdownGracePeriod`), hands back the rest, and
 * records every result before the PgClient it was given is released.
 */
export const layer = (
  options: WorkerOptions = {}
): Layer.Layer<never, WorkerLayerError, PgClient.PgClient | SqlClient.SqlClient> =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const settings = yield* resolve(options)
      yield* requireKey(settings, options)
      return layerWith(settings, options)
    })
  )
