import { Cause, Clock, Context, Duration, Effect, Either, Fiber, FiberSet, Layer, Option, Queue, Schedule, Tracer } from "effect"
import { hostname } from "node:os"
import { randomBytes } from "node:crypto"
import { type AppSettings, requireEncryptionKey, Settings } from "../config/AppConfig.js"
import { type Keyring, keyringOf } from "../crypto/Keyring.js"
import {
  type AttemptOutcome,
  AttemptsExhausted,
  decide,
  type Decision,
  describe,
  EndpointDisabled,
  InvalidUrl,
  reasonOf,
  responseStatusOf,
  SecretUndecryptable,
  WorkerDefect
} from "../delivery/Outcome.js"
import { DeliveryHttp, type HttpReply } from "../http/DeliveryHttp.js"
import { LogFields } from "../observability/Log.js"
import { Metrics, type WorkerMetrics } from "../observability/Metrics.js"
import { userAgent } from "../PackageInfo.js"
import { type ClaimedDelivery, type Completion, DeliveryQueue } from "../queue/DeliveryQueue.js"
import { signatureHeader } from "../signing/Signer.js"
import * as Completer from "./Completer.js"
import { TraceDeliveries } from "./TraceDeliveries.js"
import { Wakeup } from "./Wakeup.js"

/** Who this worker is: the lease owner written to locked_by. */
export class WorkerIdentity extends Context.Tag("webhook-worker/WorkerIdentity")<WorkerIdentity, {
  readonly workerId: string
  readonly instance: number
}>() {
  static readonly make = (instance: number) => ({
    instance,
    workerId: `${hostname()}:${instance}:${process.pid}:${randomBytes(3).toString("hex")}`
  })
  static readonly layer = (instance: number) => Layer.sync(WorkerIdentity, () => WorkerIdentity.make(instance))
}

export { TraceDeliveries }

/** A span link to the producer's span, from the traceparent stored at enqueue. */
export const producerLink = (traceparent: string | null): ReadonlyArray<Tracer.SpanLink> => {
  if (traceparent === null) return []
  const match = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(traceparent)
  if (match === null) return []
  const [, traceId, spanId, flags] = match as unknown as [string, string, string, string]
  return [{
    _tag: "SpanLink",
    span: Tracer.externalSpan({ traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 }),
    attributes: { "webhook.link": "producer" }
  }]
}

const traceparentOf = (span: Tracer.AnySpan) => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/** The request body: the exact bytes that are signed and sent. */
export const requestBody = (row: Pick<ClaimedDelivery, "eventType" | "createdAtMs" | "payload">): string =>
  `{"type":${JSON.stringify(row.eventType)},"timestamp":"${new Date(row.createdAtMs).toISOString()}","data":${row.payload}}`

interface Prepared {
  readonly url: string
  readonly secrets: ReadonlyArray<string>
  /** The row's secret encrypted under the current key, when it was plaintext or on an old key. */
  readonly storeSecret: string | null
}

/** Everything about a row that can be judged before sending; a failure here is the attempt's outcome. */
export const prepare = (row: ClaimedDelivery, keyring: Keyring): Either.Either<Prepared, AttemptOutcome> => {
  if (row.attempt > row.maxAttempts) return Either.left(new AttemptsExhausted({ attempts: row.maxAttempts }))
  if (row.endpointId !== null && row.endpointEnabled === false) {
    return Either.left(new EndpointDisabled({ reason: `endpoint ${row.endpointId} is disabled` }))
  }
  if (row.url === null || row.url.trim() === "") {
    return Either.left(new InvalidUrl({ reason: "the row has no url and no registered endpoint" }))
  }
  if (row.secret === null || row.secret === "") {
    return Either.left(new SecretUndecryptable({ reason: "the row has no secret and no registered endpoint" }))
  }
  const secret = keyring.decrypt(row.secret)
  if (Either.isLeft(secret)) return Either.left(secret.left)
  const secrets = [secret.right]
  if (row.previousSecret !== null) {
    Either.map(keyring.decrypt(row.previousSecret), (previous) => secrets.push(previous))
  }
  return Either.right({
    url: row.url,
    secrets,
    storeSecret: row.secretFromRow && keyring.needsEncryption(row.secret) ? keyring.encrypt(secret.right) : null
  })
}

const statusOf = (decision: Decision) =>
  decision._tag === "Deliver" ? "delivered" as const : decision._tag === "Retry" ? "failed" as const : "dead_letter" as const

const SETTLE_MS = 15

/** Runs the worker until its scope closes; then drains (see `drain` below). */
export const run = Effect.gen(function*() {
  const settings = yield* Settings
  const queue = yield* DeliveryQueue
  const http = yield* DeliveryHttp
  const wakeup = yield* Wakeup
  const metrics = yield* Metrics
  const { instance, workerId } = yield* WorkerIdentity
  const tracing = yield* TraceDeliveries

  const wake = yield* Queue.sliding<void>(1)
  const capacity = yield* Queue.sliding<void>(1)
  let inFlight = 0

  const initial = yield* settings.get
  // Fail at start, not on the first row: every delivery needs the key.
  yield* requireEncryptionKey(initial)
  // Kept fresh by the claim loop; read synchronously by callbacks.
  let current: AppSettings = initial
  const completer = yield* Completer.make({
    workerId,
    audit: () => current.auditLogEnabled,
    onLeaseLost: (lost) =>
      Effect.sync(() => metrics.leaseLost(lost.length)).pipe(
        Effect.zipRight(Effect.logWarning("Attempt results not recorded: the lease had passed to another worker")),
        Effect.annotateLogs({ deliveries: lost.map((c) => c.id).join(",") })
      ),
    onRecorded: (recorded) =>
      Effect.sync(() => {
        // A retry due before the next poll: wake the claimer so it sets a timer for it.
        if (recorded.some((c) => c.status === "failed" && (c.retryDelayMs ?? Infinity) < current.pollIntervalMs)) {
          wake.unsafeOffer(undefined)
        }
      })
  })

  const deliveries = yield* FiberSet.make<void>()

  const deliverOne = (row: ClaimedDelivery) =>
    Effect.gen(function*() {
      const s = current
      const keyring = Option.getOrThrowWith(keyringOf(s), () => new Error("WEBHOOK_SECRET_ENCRYPTION_KEY is not set"))
      const started = performance.now()
      const prepared = prepare(row, keyring)
      let reply: HttpReply
      if (Either.isLeft(prepared)) {
        reply = { outcome: prepared.left, responseBody: null }
      } else {
        const body = requestBody(row)
        const timestamp = Math.floor((yield* Clock.currentTimeMillis) / 1000)
        const headers: Record<string, string> = {
          "webhook-id": row.id,
          "webhook-timestamp": String(timestamp),
          "webhook-signature": signatureHeader(prepared.right.secrets, row.id, timestamp, body),
          "user-agent": userAgent
        }
        if (tracing) {
          const span = yield* Effect.currentSpan.pipe(Effect.option)
          if (Option.isSome(span)) headers.traceparent = traceparentOf(span.value)
        }
        reply = yield* http.send({
          url: prepared.right.url,
          body,
          timeoutMs: s.deliveryTimeoutMs,
          allowPrivateNetworks: s.allowPrivateNetworks,
          headers
        })
      }
      const durationMs = performance.now() - started
      yield* record(row, reply, durationMs, Either.isRight(prepared) ? prepared.right.storeSecret : null, s)
    }).pipe(
      (attempt) => (tracing ? traced(row, attempt) : attempt),
      Effect.catchAllDefect((defect) =>
        record(
          row,
          { outcome: new WorkerDefect({ detail: defect instanceof Error ? defect.message : String(defect) }), responseBody: null },
          0,
          null,
          current
        )
      ),
      Effect.onInterrupt(() => Effect.sync(() => completer.release({ id: row.id, attempt: row.attempt, started: true })))
    )

  const record = (row: ClaimedDelivery, reply: HttpReply, durationMs: number, storeSecret: string | null, s: AppSettings) =>
    Effect.gen(function*() {
      const outcome = reply.outcome
      const decision = yield* decide(outcome, row.attempt, row.maxAttempts, s)
      const status = statusOf(decision)
      const completion: Completion = {
        id: row.id,
        attempt: row.attempt,
        status,
        retryDelayMs: decision._tag === "Retry" ? Duration.toMillis(decision.delay) : null,
        responseStatus: responseStatusOf(outcome),
        error: describe(outcome),
        reason: reasonOf(outcome),
        responseBody: reply.responseBody,
        durationMs,
        storeSecret,
        disableEndpoint: outcome._tag === "Gone" && row.endpointId !== null ? row.endpointId : null,
        span: tracing ? Option.getOrUndefined(yield* Effect.option(Effect.currentSpan)) : undefined
      }
      completer.record(completion)
      observe(metrics, row, completion)
      if (tracing) yield* Effect.annotateCurrentSpan(spanResultAttributes(completion))
      yield* Effect.logInfo("Delivering webhook", new LogFields(attemptLogFields(row, completion)))
    })

  const claimRetry = Schedule.exponential(Duration.millis(100), 2).pipe(Schedule.union(Schedule.spaced(Duration.seconds(5))))

  const claimLoop = Effect.gen(function*() {
    let backlog = true
    let waitMs = 0
    // After a notification, one more claim shortly after: the trigger notifies once per wave of
    // concurrent commits, and a commit that raced the notifier's may not have been visible yet.
    let settle = false
    while (true) {
      metrics.loopHeartbeat()
      current = yield* settings.get
      const free = current.maxConcurrentDeliveries - inFlight
      if (free <= 0) {
        yield* Queue.take(capacity)
        continue
      }
      if (!backlog) {
        const woken = yield* Queue.take(wake).pipe(Effect.timeoutOption(Duration.millis(waitMs)))
        settle = Option.isSome(woken)
        current = yield* settings.get
      }
      const limit = Math.min(current.batchSize, current.maxConcurrentDeliveries - inFlight)
      if (limit <= 0) continue
      // Claim and start as one step, so shutdown never strands claimed rows between the two.
      const claimed = yield* Effect.uninterruptible(
        queue.claim(workerId, limit, current.leaseMs).pipe(
          // Retrying on purpose (database down) is not a stuck loop: /healthz stays green, /readyz says why.
          Effect.tapError(() => Effect.sync(() => metrics.loopHeartbeat())),
          Effect.tapError((error) =>
            Effect.logWarning("Claiming deliveries failed; retrying").pipe(Effect.annotateLogs({ error: error.message }))
          ),
          Effect.retry(claimRetry),
          Effect.tap((rows) =>
            Effect.forEach(rows, (row) => {
              inFlight++
              // Forked from the uninterruptible claim step: make the attempt itself interruptible,
              // so the shutdown grace period can cut it short.
              return FiberSet.run(deliveries, Effect.interruptible(deliverOne(row)).pipe(
                Effect.ensuring(Effect.sync(() => {
                  inFlight--
                  metrics.inFlight(inFlight)
                  capacity.unsafeOffer(undefined)
                }))
              ))
            }, { discard: true })
          )
        )
      )
      if (claimed.length > 0) {
        metrics.claimed(claimed.length)
        metrics.inFlight(inFlight)
        const reclaimed = claimed.filter((row) => row.reclaimed).length
        if (reclaimed > 0) metrics.leasesReclaimed(reclaimed)
      }
      backlog = claimed.length === limit
      if (!backlog && settle) {
        waitMs = SETTLE_MS
      } else if (!backlog) {
        const next = yield* queue.nextDueInMs.pipe(Effect.orElseSucceed(() => null))
        waitMs = next === null ? current.pollIntervalMs : Math.min(current.pollIntervalMs, Math.max(next, 5))
      }
    }
  })

  yield* wakeup.subscribe(() => wake.unsafeOffer(undefined))
  const loop = yield* Effect.forkScoped(claimLoop)

  yield* Effect.logInfo("Worker started").pipe(
    Effect.annotateLogs({
      worker_id: workerId,
      instance,
      batch_size: initial.batchSize,
      max_concurrent_deliveries: initial.maxConcurrentDeliveries,
      poll_interval_s: initial.pollIntervalMs / 1000,
      lease_s: initial.leaseMs / 1000
    })
  )

  // Shutdown: stop claiming, let in-flight attempts finish within the grace period, hand back
  // what is still running after it, and write every result before the scope closes.
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      yield* Fiber.interrupt(loop)
      const grace = Duration.millis(current.shutdownGracePeriodMs)
      const running = yield* FiberSet.size(deliveries)
      if (running > 0) {
        yield* Effect.logInfo("Stopping: waiting for in-flight deliveries").pipe(Effect.annotateLogs({ in_flight: running }))
      }
      // Finalizers run uninterruptibly; the waits must be interruptible for their timeouts to bite.
      const finished = yield* Effect.interruptible(FiberSet.awaitEmpty(deliveries)).pipe(Effect.timeoutOption(grace))
      if (Option.isNone(finished)) {
        const left = yield* FiberSet.size(deliveries)
        yield* Effect.logWarning("Grace period over: handing back unfinished deliveries").pipe(
          Effect.annotateLogs({ handed_back: left })
        )
        yield* FiberSet.clear(deliveries)
      }
      const drained = yield* Effect.interruptible(completer.drain).pipe(Effect.timeoutOption(Duration.seconds(10)))
      if (Option.isNone(drained)) {
        yield* Effect.logError("Could not record every result before exit; their leases will expire and they will be retried").pipe(
          Effect.annotateLogs({ unrecorded: completer.pending() })
        )
      }
      yield* Effect.logInfo("Worker stopped")
    }).pipe(Effect.catchAllCause((cause) => Effect.logError("Shutdown failed", Cause.pretty(cause))))
  )
}).pipe(
  Effect.annotateLogs({ service: "worker" }),
  Effect.withLogSpan("worker")
)

/**
 * One span per attempt. With the producer's stored traceparent it is a child of (and linked to)
 * the producer's span, so one trace shows the request that caused the webhook and every attempt;
 * without one it is a root span.
 */
const traced = <A, E, R>(row: ClaimedDelivery, attempt: Effect.Effect<A, E, R>) => {
  const links = producerLink(row.traceparent)
  return Effect.withSpan(attempt, "webhook.deliver", {
    ...(links[0] === undefined ? { root: true } : { parent: links[0].span }),
    kind: "producer",
    links,
    attributes: definedOnly({
      "webhook.id": row.id,
      "webhook.event_type": row.eventType,
      "webhook.attempt": row.attempt,
      "webhook.max_attempts": row.maxAttempts,
      "webhook.endpoint_id": row.endpointId,
      "server.address": destinationHost(row.url)
    })
  })
}

const spanResultAttributes = (completion: Completion): Record<string, unknown> =>
  definedOnly({
    "webhook.outcome": completion.status,
    "webhook.reason": completion.reason,
    "http.response.status_code": completion.responseStatus,
    "webhook.next_retry_in_ms": completion.retryDelayMs,
    "webhook.next_retry_at": completion.retryDelayMs === null ? null : new Date(Date.now() + completion.retryDelayMs).toISOString()
  })

// The OTel bridge would export a missing value as the string "undefined"; leave the key out instead.
const definedOnly = (attributes: Record<string, unknown>): Record<string, unknown> =>
  Object.fromEntries(Object.entries(attributes).filter(([, value]) => value !== undefined && value !== null))

const attemptLogFields = (row: ClaimedDelivery, completion: Completion) => {
  const fields: Record<string, unknown> = {
    delivery_id: row.id,
    event_type: row.eventType,
    attempt: row.attempt,
    max_attempts: row.maxAttempts,
    outcome: completion.status,
    reason: completion.reason,
    http_status: completion.responseStatus,
    duration_ms: Math.round(completion.durationMs * 10) / 10,
    destination: destinationHost(row.url)
  }
  if (completion.retryDelayMs !== null) fields.next_retry_in_s = Math.round(completion.retryDelayMs / 100) / 10
  if (completion.error !== null) fields.error = completion.error
  return fields
}

/** Only the host of a destination is logged: paths often carry tokens (e.g. chat webhooks). */
export const destinationHost = (url: string | null): string | null => {
  if (url === null) return null
  try {
    return new URL(url).host
  } catch {
    // Never the text itself: a malformed URL may still carry a token.
    return "(invalid URL)"
  }
}

const observe = (metrics: WorkerMetrics, row: ClaimedDelivery, completion: Completion) => {
  metrics.attemptDuration(completion.durationMs / 1000, completion.status)
  switch (completion.status) {
    case "delivered":
      metrics.delivered(row.userId, row.endpointId)
      break
    case "failed":
      metrics.failed(completion.reason)
      metrics.retryScheduled()
      break
    case "dead_letter":
      if (completion.reason !== "delivered") metrics.failed(completion.reason)
      metrics.deadLettered(completion.reason)
      break
  }
}

/** The worker as a layer: it runs while the layer's scope is open. */
export const layer = Layer.scopedDiscard(run)
