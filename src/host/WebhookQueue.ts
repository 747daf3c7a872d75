import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import type * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import type * as Tracer from "effect/Tracer"
import type { ConfigInvalid } from "../config/AppConfig.js"
import { keyringOf } from "../crypto/Keyring.js"
import { type Enqueued, type EnqueueError, type EnqueueRequest, insertRowsOn, type Row, toRow } from "../queue/Enqueue.js"
import { requireKey, resolve } from "./HostConfig.js"

export {
  type Destination,
  EndpointIsDisabled,
  EndpointNotFound,
  type Enqueued,
  type EnqueueError,
  type EnqueueRequest,
  EventTypeNotSubscribed,
  InvalidEnqueueRequest
} from "../queue/Enqueue.js"

/**
 * Queues webhooks on the host's own `SqlClient`. The rows are written on the connection of the
 * calling fiber, so inside the host's `sql.withTransaction` they commit or roll back with the
 * business write, and a rolled-back transaction queues nothing.
 */
export class WebhookQueue extends Context.Tag("webhook-worker/WebhookQueue")<WebhookQueue, {
  /**
   * Validates and queues one delivery. A repeat of an idempotency key (for the same
   * destination) queues nothing and returns the existing delivery's id with `duplicate: true`.
   */
  readonly enqueue: (request: EnqueueRequest) => Effect.Effect<Enqueued, EnqueueError | SqlError.SqlError>
  /** Queues several deliveries with one INSERT: all of them, or none when one is invalid. */
  readonly enqueueMany: (
    requests: ReadonlyArray<EnqueueRequest>
  ) => Effect.Effect<ReadonlyArray<Enqueued>, EnqueueError | SqlError.SqlError>
}>() {}

export interface QueueOptions {
  /**
   * Encrypts the URL+secret deliveries' secrets at rest; the worker decrypts them with the same
   * key. Default: WEBHOOK_SECRET_ENCRYPTION_KEY, read as `config` says.
   */
  readonly encryptionKey?: string | Redacted.Redacted<string> | undefined
  /** `maxAttempts` of a request that gives none. Default: WEBHOOK_MAX_ATTEMPTS, read as `config` says, else 5. */
  readonly defaultMaxAttempts?: number | undefined
  /**
   * Where to read the variables for the options not given here. Without it: the current
   * ConfigProvider when no option is given at all, and nothing (the defaults) once one is.
   */
  readonly config?: ConfigProvider.ConfigProvider | undefined
}

/** W3C traceparent of a span. */
const traceparentOf = (span: Tracer.AnySpan): string => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/**
 * Whether a span descends from one of the caller's: an external parent, or a span other than
 * @effect/sql's own (`sql.transaction` from `withTransaction`, which every transaction opens,
 * whether or not the app traces anything).
 */
const underCallerSpan = (span: Tracer.Span): boolean => {
  let parent = span.parent
  while (Option.isSome(parent)) {
    const ancestor = parent.value
    if (ancestor._tag === "ExternalSpan" || !ancestor.name.startsWith("sql.")) return true
    parent = ancestor.parent
  }
  return false
}

/**
 * The producer's trace context: our enqueue span, when the caller is inside a span of its own.
 * A span we opened at the root, or under a bare transaction, would tie the delivery to a trace
 * nobody else is part of.
 */
const producerTraceparent = Effect.map(
  Effect.option(Effect.currentSpan),
  (span) => Option.isSome(span) && underCallerSpan(span.value) ? traceparentOf(span.value) : undefined
)

/** The service over a captured SqlClient; the statements still run on the caller's connection. */
export const make = (options: QueueOptions = {}): Effect.Effect<Context.Tag.Service<WebhookQueue>, ConfigInvalid, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const source = {
      config: options.config,
      settings: options.encryptionKey === undefined && options.defaultMaxAttempts === undefined
        ? undefined
        : { encryptionKey: options.encryptionKey, defaultMaxAttempts: options.defaultMaxAttempts }
    }
    const settings = yield* resolve(source)
    yield* requireKey(settings, source)
    const keyring = Option.getOrThrow(keyringOf(settings))
    const insert = insertRowsOn(yield* SqlClient.SqlClient)

    const enqueueMany = Effect.fn("WebhookQueue.enqueueMany", { kind: "producer" })(
      function*(requests: ReadonlyArray<EnqueueRequest>) {
        const traceparent = yield* producerTraceparent
        const rows: Array<Row> = []
        for (const request of requests) {
          const row = toRow(
            request.traceparent === undefined && traceparent !== undefined ? { ...request, traceparent } : request,
            keyring,
            settings.defaultMaxAttempts
          )
          if (Either.isLeft(row)) return yield* row.left
          rows.push(row.right)
        }
        yield* Effect.annotateCurrentSpan({ "webhook.count": rows.length })
        return yield* insert(rows)
      }
    )
    return {
      enqueueMany,
      enqueue: (request) => Effect.map(enqueueMany([request]), (enqueued) => enqueued[0]!)
    }
  })

/**
 * The queue on the host's SqlClient. Without options it reads WEBHOOK_SECRET_ENCRYPTION_KEY and
 * WEBHOOK_MAX_ATTEMPTS from the current ConfigProvider; it fails with `ConfigInvalid` when there
 * is no usable key.
 */
export const layer = (options: QueueOptions = {}): Layer.Layer<WebhookQueue, ConfigInvalid, SqlClient.SqlClient> =>
  Layer.effect(WebhookQueue, make(options))

/** Queues one delivery with the `WebhookQueue` in context. */
export const enqueue = (request: EnqueueRequest) => Effect.flatMap(WebhookQueue, (queue) => queue.enqueue(request))

/** Queues several deliveries (one INSERT) with the `WebhookQueue` in context. */
export const enqueueMany = (requests: ReadonlyArray<EnqueueRequest>) =>
  Effect.flatMap(WebhookQueue, (queue) => queue.enqueueMany(requests))
