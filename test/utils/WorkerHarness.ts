import { SqlClient } from "@effect/sql"
import { type Context, Duration, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { type AppSettings, defaults, Settings } from "../../src/config/AppConfig.js"
import * as DeliveryHttp from "../../src/http/DeliveryHttp.js"
import * as Log from "../../src/observability/Log.js"
import * as Metrics from "../../src/observability/Metrics.js"
import { DeliveryQueue } from "../../src/queue/DeliveryQueue.js"
import * as Wakeup from "../../src/worker/Wakeup.js"
import * as Worker from "../../src/worker/Worker.js"

export const TEST_KEY = "q8vTx0H1m7B4cN9yL2kZp5rW3sD6fG8hJ0aE1uI4oY8="

/** Settings for in-process worker tests: fast retries and polls, loopback receivers allowed. */
export const testSettings = (overrides: Partial<AppSettings> = {}): Partial<AppSettings> => ({
  encryptionKey: Option.some(Redacted.make(TEST_KEY)),
  allowPrivateNetworks: true,
  pollIntervalMs: 200,
  retryBaseDelayMs: 50,
  retryBackoffFactor: 2,
  retryMaxDelayMs: 1000,
  deliveryTimeoutMs: 2000,
  leaseMs: 8000,
  shutdownGracePeriodMs: 3000,
  ...overrides
})

export interface HarnessOptions {
  readonly metrics?: Metrics.WorkerMetrics
  /** Receives every log line the worker writes (JSON); lines are dropped otherwise. */
  readonly logs?: Array<string>
  /** Read at every settings read, over `overrides`: a reload (SIGHUP) while the worker runs. */
  readonly reloaded?: () => Partial<AppSettings>
  /** Wraps the real SQL queue (to inject a fault into one of its operations). */
  readonly wrapQueue?: (queue: Context.Tag.Service<typeof DeliveryQueue>) => Context.Tag.Service<typeof DeliveryQueue>
}

/** The worker's layer over the given settings, needing only a PgClient. */
export const workerLayer = (overrides: Partial<AppSettings> = {}, options: HarnessOptions = {}) =>
  Worker.layer.pipe(
    Layer.provide(Layer.mergeAll(
      options.wrapQueue === undefined
        ? DeliveryQueue.layer
        : Layer.effect(DeliveryQueue, Effect.map(DeliveryQueue, options.wrapQueue)).pipe(Layer.provide(DeliveryQueue.layer)),
      DeliveryHttp.layer,
      Wakeup.layerListen,
      options.metrics ? Layer.succeed(Metrics.Metrics, options.metrics) : Metrics.layerDetached,
      Worker.WorkerIdentity.layer(1),
      options.reloaded === undefined
        ? Settings.layer(testSettings(overrides))
        : Layer.succeed(Settings, { get: Effect.sync(() => ({ ...defaults, ...testSettings(overrides), ...options.reloaded!() })) })
    )),
    Layer.provide(Log.layer("json", new Log.LogThreshold("DEBUG"), {
      write: (line) => {
        options.logs?.push(line)
      }
    }))
  )

/** Starts a worker in the background; the returned effect stops it (drain included). */
export const startWorker = (overrides: Partial<AppSettings> = {}, options: HarnessOptions = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    yield* Layer.buildWithScope(workerLayer(overrides, options), scope)
    return Scope.close(scope, Exit.void)
  })

/** Polls until `check` holds (real time), failing the test after `timeoutMs`. */
export const eventually = <A, E, R>(check: Effect.Effect<A | undefined, E, R>, what: string, timeoutMs = 10_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (true) {
      const value = yield* check
      if (value !== undefined && value !== false) return value as A
      if (Date.now() > deadline) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep(Duration.millis(20))
    }
  })

export interface QueueRow {
  readonly id: string
  readonly status: string
  readonly attempt_count: number
  readonly max_attempts: number
  readonly last_response_status: number | null
  readonly last_error: string | null
  readonly secret: string | null
  readonly delivered_at: Date | null
  readonly next_retry_at: Date
  readonly locked_by: string | null
}

export const rowById = (id: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<QueueRow>`SELECT id::text, status, attempt_count, max_attempts, last_response_status, last_error, secret,
                         delivered_at, next_retry_at, locked_by
                  FROM webhook_delivery_queue WHERE id = ${id}`.pipe(Effect.map((rows) => rows[0]!))
  ).pipe(Effect.orDie)

export const statusIs = (id: string, status: string) =>
  Effect.map(rowById(id), (row) => (row.status === status ? row : undefined))

/** Inserts a row the way the deployment guide's producer does: plain SQL, plaintext secret. */
export const insertRaw = (fields: {
  url: string
  secret?: string | null
  eventType?: string
  payload?: string
  maxAttempts?: number
  userId?: string
}) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ id: string }>`
      INSERT INTO webhook_delivery_queue (id, "userId", url, secret, event_type, payload, status, attempt_count, max_attempts, next_retry_at)
      VALUES (gen_random_uuid(), ${fields.userId ?? "test_user_id"}, ${fields.url}, ${fields.secret === undefined ? "test_secret" : fields.secret},
              ${fields.eventType ?? "call.completed"}, ${fields.payload ?? `{"test": "data"}`}::json, 'pending', 0, ${fields.maxAttempts ?? 5}, now())
      RETURNING id::text`.pipe(Effect.map((rows) => rows[0]!.id))
  ).pipe(Effect.orDie)
