import * as OtelResource from "@effect/opentelemetry/Resource"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import * as PgClient from "@effect/sql-pg/PgClient"
import { isSpanContextValid, trace, TraceFlags } from "@opentelemetry/api"
import * as Cause from "effect/Cause"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import Pg from "pg"
import { type AppSettings, ConfigInvalid, type LogFormat, type LogLevelName } from "../config/AppConfig.js"
import { keyringOf } from "../crypto/Keyring.js"
import * as Database from "../db/Database.js"
import { ensureMigrated } from "../db/Migrator.js"
import * as Log from "../observability/Log.js"
import {
  EndpointIsDisabled,
  EndpointNotFound,
  type Enqueued,
  type EnqueueError,
  type EnqueueRequest,
  EventTypeNotSubscribed,
  insertRowsWith,
  InvalidEnqueueRequest,
  type Row,
  toRow
} from "../queue/Enqueue.js"
import { requireKey, resolve, type WorkerSettings } from "./HostConfig.js"
import { layerWith } from "./internal/workerLayer.js"
import type { WorkerOptions } from "./WebhookWorker.js"

/**
 * The database: a connection string (the client opens and owns a pool), or the app's own
 * `pg.Pool` (shared, and left open by `close()`).
 */
export type DatabaseConnection =
  | { readonly connectionString: string; readonly maxConnections?: number | undefined }
  | { readonly pool: Pg.Pool }

export interface WebhookClientOptions {
  /**
   * Encrypts URL+secret deliveries' secrets at rest: the worker's WEBHOOK_SECRET_ENCRYPTION_KEY.
   * Only those need it; a producer that enqueues to registered endpoints alone can leave it out.
   */
  readonly encryptionKey?: string | undefined
  /** `maxAttempts` of a request that gives none (default 5, as WEBHOOK_MAX_ATTEMPTS). */
  readonly defaultMaxAttempts?: number | undefined
}

export interface EnqueueOptions {
  /**
   * The `pg` client the app called BEGIN on: the delivery is written in that transaction and
   * commits or rolls back with it. Without it the delivery is written (and committed) on its own.
   */
  readonly client?: Pg.ClientBase | undefined
}

/** Queues webhooks from an app that does not use Effect. */
export interface WebhookClient {
  /**
   * Validates and queues one delivery. Rejects with a typed `EnqueueError` (see `isEnqueueError`)
   * when the request is unusable, or with pg's own error when the database fails. A repeat of an
   * idempotency key (same destination) queues nothing and resolves to the existing delivery's id
   * with `duplicate: true`.
   */
  readonly enqueue: (request: EnqueueRequest, options?: EnqueueOptions) => Promise<Enqueued>
  /** Queues several deliveries with one INSERT: all of them, or none when one is invalid. */
  readonly enqueueMany: (requests: ReadonlyArray<EnqueueRequest>, options?: EnqueueOptions) => Promise<ReadonlyArray<Enqueued>>
  /** Applies pending schema migrations (once each; safe from several processes). Resolves to their names. */
  readonly migrate: () => Promise<ReadonlyArray<string>>
  /** Ends the pool the client opened from a connection string; a pool the app passed stays open. */
  readonly close: () => Promise<void>
}

/** Any error `enqueue` rejects with that the app can act on (the request, not the database, is at fault). */
export const isEnqueueError = (error: unknown): error is EnqueueError =>
  error instanceof InvalidEnqueueRequest ||
  error instanceof EndpointNotFound ||
  error instanceof EndpointIsDisabled ||
  error instanceof EventTypeNotSubscribed

/** A failure of pg itself; the Promise API rejects with the pg error inside, as pg code expects. */
class PgFailure extends Data.TaggedError("PgFailure")<{ readonly cause: unknown }> {}

/** Rejects with the typed error itself (not Effect's FiberFailure wrapper). */
const toPromise = <A, E>(effect: Effect.Effect<A, E>): Promise<A> =>
  Effect.runPromiseExit(effect).then((exit) => {
    if (Exit.isSuccess(exit)) return exit.value
    const failure = Cause.failureOption(exit.cause)
    if (Option.isSome(failure)) throw failure.value instanceof PgFailure ? failure.value.cause : failure.value
    throw Cause.squash(exit.cause)
  })

/** Settings resolved from code only (never the environment), or a thrown `ConfigInvalid`. */
const settingsOf = (settings: WorkerSettings, options: { readonly keyRequired: boolean } = { keyRequired: true }): AppSettings => {
  const resolved = Effect.runSync(Effect.either(
    options.keyRequired ? Effect.tap(resolve({ settings }), (s) => requireKey(s, { settings })) : resolve({ settings })
  ))
  if (Either.isLeft(resolved)) throw resolved.left
  return resolved.right
}

/** Why a client without `encryptionKey` refuses a URL+secret delivery. */
const keyNeeded = () =>
  new ConfigInvalid({
    variable: "encryptionKey",
    reason: "is required to enqueue to a URL with its secret, which is stored encrypted: pass the worker's " +
      "WEBHOOK_SECRET_ENCRYPTION_KEY to createWebhookClient (deliveries to registered endpoints need none)"
  })

/**
 * The producer's trace context from the OpenTelemetry API's active span, when the app runs an
 * OTel SDK (the API finds it through its global registration); undefined otherwise.
 */
const activeTraceparent = (): string | undefined => {
  const span = trace.getActiveSpan()
  if (span === undefined) return undefined
  const context = span.spanContext()
  if (!isSpanContextValid(context)) return undefined
  return `00-${context.traceId}-${context.spanId}-${(context.traceFlags & TraceFlags.SAMPLED) !== 0 ? "01" : "00"}`
}

const poolOf = (database: DatabaseConnection): { readonly pool: Pg.Pool; readonly owned: boolean } => {
  if ("pool" in database) return { pool: database.pool, owned: false }
  const url = Redacted.make(database.connectionString)
  return { pool: Database.makePool({ url, maxConnections: database.maxConnections ?? 4, applicationName: "webhook-worker client" }), owned: true }
}

/** A PgClient over the app's pool, which it leaves open. */
const pgLayerFromPool = (pool: Pg.Pool) => PgClient.layerFromPool({ acquire: Effect.succeed(pool) })

/**
 * The Promise API: `enqueue(request, { client })` joins the `pg` transaction the app opened on
 * `client`, with the same validation, SQL and typed errors as the Effect `WebhookQueue`.
 * Throws `ConfigInvalid` at once when an encryption key is given but malformed (or empty).
 * Without one, deliveries to registered endpoints are queued and a URL+secret delivery is
 * rejected with `ConfigInvalid` naming `encryptionKey`.
 */
export const createWebhookClient = (database: DatabaseConnection, options: WebhookClientOptions = {}): WebhookClient => {
  const settings = settingsOf(
    { encryptionKey: options.encryptionKey, defaultMaxAttempts: options.defaultMaxAttempts },
    { keyRequired: options.encryptionKey !== undefined }
  )
  const keyring = Option.getOrUndefined(keyringOf(settings))
  const { owned, pool } = poolOf(database)
  let closed: Promise<void> | undefined

  const insertOn = (queryable: Pg.ClientBase | Pg.Pool) =>
    insertRowsWith(<A extends object>(text: string, params: ReadonlyArray<unknown>): Effect.Effect<ReadonlyArray<A>, PgFailure> =>
      Effect.tryPromise({
        try: () => queryable.query<A & Pg.QueryResultRow>(text, [...params]).then((result): ReadonlyArray<A> => result.rows),
        catch: (cause) => new PgFailure({ cause })
      })
    )

  const enqueueMany = (requests: ReadonlyArray<EnqueueRequest>, enqueueOptions: EnqueueOptions = {}) => {
    const traceparent = activeTraceparent()
    const rows: Array<Row> = []
    for (const request of requests) {
      if (keyring === undefined && request.destination !== null && typeof request.destination === "object" && "url" in request.destination) {
        return Promise.reject(keyNeeded())
      }
      const row = toRow(
        request.traceparent === undefined && traceparent !== undefined ? { ...request, traceparent } : request,
        keyring,
        settings.defaultMaxAttempts
      )
      if (Either.isLeft(row)) return Promise.reject(row.left)
      rows.push(row.right)
    }
    return toPromise(insertOn(enqueueOptions.client ?? pool)(rows))
  }

  return {
    enqueueMany,
    enqueue: (request, enqueueOptions) => enqueueMany([request], enqueueOptions).then((enqueued) => enqueued[0]!),
    migrate: () => toPromise(Effect.provide(ensureMigrated, pgLayerFromPool(pool))),
    close: () => {
      closed ??= owned ? pool.end() : Promise.resolve()
      return closed
    }
  }
}

export interface WebhookWorkerOptions extends WorkerSettings, Omit<WorkerOptions, "config" | "settings" | "tracing"> {
  readonly encryptionKey: string
  /**
   * Spans for each delivery attempt, sent to the OpenTelemetry SDK the app registered globally
   * (e.g. `new NodeSDK(...).start()`), linked to the span that enqueued the delivery. Default false.
   */
  readonly tracing?: boolean | undefined
  /** `service.name` of those spans (default "webhook-worker"). */
  readonly serviceName?: string | undefined
  /** Worker log lines to stdout at this level and above; "NONE" for none (default "INFO"). */
  readonly logLevel?: LogLevelName | "NONE" | undefined
  /** "json" (one object a line) or "pretty" (default "json"). */
  readonly logFormat?: LogFormat | undefined
}

/** A worker running in the app's process. */
export interface RunningWorker {
  /**
   * Stops claiming, waits for in-flight deliveries (up to `shutdownGracePeriod`), hands back the
   * rest and records every result. Resolves when done; the app's pool is left open.
   */
  readonly stop: () => Promise<void>
}

const SETTING_KEYS: ReadonlyArray<keyof WorkerSettings> = [
  "encryptionKey",
  "previousEncryptionKeys",
  "batchSize",
  "pollInterval",
  "maxConcurrentDeliveries",
  "deliveryTimeout",
  "defaultMaxAttempts",
  "retryBaseDelay",
  "retryBackoffFactor",
  "retryMaxDelay",
  "lease",
  "shutdownGracePeriod",
  "auditLog",
  "allowPrivateNetworks"
]

/**
 * Runs the webhook worker inside an app that does not use Effect. Resolves once it has started
 * (migrations applied unless `migrate: false`); rejects with `ConfigInvalid` for bad options, or
 * with the error that kept it from starting (`SqlError`, `MigrationFailed`).
 */
export const startWebhookWorker = async (database: DatabaseConnection, options: WebhookWorkerOptions): Promise<RunningWorker> => {
  const settings = settingsOf(Object.fromEntries(SETTING_KEYS.map((key) => [key, options[key]])) as WorkerSettings)
  // The app's pool is the worker's too: its claims and result writes go to it directly (see DeliveryQueue).
  const db = "pool" in database
    ? Layer.merge(pgLayerFromPool(database.pool), Layer.succeed(Database.PgPool, database.pool))
    : Database.layer({ url: Redacted.make(database.connectionString), maxConnections: database.maxConnections ?? 4 })
  const logs = options.logLevel === "NONE"
    ? Logger.replace(Logger.defaultLogger, Logger.none)
    : Log.layer(options.logFormat ?? "json", new Log.LogThreshold(options.logLevel ?? "INFO"), undefined, { instance: options.instance ?? 1 })
  const tracer = options.tracing === true
    ? OtelTracer.layerGlobal.pipe(Layer.provide(OtelResource.layer({ serviceName: options.serviceName ?? "webhook-worker" })))
    : Layer.empty
  const app = layerWith(settings, options).pipe(
    Layer.provide(db),
    Layer.provide(Layer.merge(logs, tracer))
  )
  const scope = Effect.runSync(Scope.make())
  await toPromise(
    Layer.buildWithScope(app, scope).pipe(Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))))
  )
  let stopped: Promise<void> | undefined
  return {
    stop: () => {
      stopped ??= Effect.runPromise(Scope.close(scope, Exit.void))
      return stopped
    }
  }
}
