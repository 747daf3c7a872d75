import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Runtime from "effect/Runtime"
import * as Tracer from "effect/Tracer"
import { hostname } from "node:os"
import { randomBytes } from "node:crypto"
import { type AppSettings, requireEncryptionKey, Settings } from "../config/AppConfig.js"
import { isEncrypted, type Keyring, keyringOf } from "../crypto/Keyring.js"
import {
  type AttemptOutcome,
  AttemptsExhausted,
  decide,
  type Decision,
  decisionWithoutSchedule,
  describe,
  EndpointDisabled,
  InvalidUrl,
  reasonOf,
  responseStatusOf,
  SecretUndecryptable,
  WorkerDefect
} from "../delivery/Outcome.js"
import { type CancelAttempt, checkUrl, clientSpanAttributes, DeliveryHttp, type HttpReply, replySpanAttribute } from "../http/DeliveryHttp.js"
import { isoTimeFormatter } from "../lib/IsoTime.js"
import { memoizeBounded } from "../lib/Memo.js"
import { retryUntilDone } from "../lib/Retry.js"
import { Signal } from "../lib/Signal.js"
import * as Log from "../observability/Log.js"
import { Metrics, type WorkerMetrics } from "../observability/Metrics.js"
import { userAgent } from "../PackageInfo.js"
import { WORKER_POOL_SIZE } from "../db/Database.js"
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

/**
 * The trace flags of an external parent, under the key @effect/opentelemetry's tracer reads them
 * by (its `OtelTraceFlags` tag): without them it takes every remote parent as sampled, and a
 * producer's "not sampled" (`-00`) would be traced anyway. A tag of the same key, so that this
 * module does not load the OpenTelemetry SDK when tracing is off; the `-00` test guards the key.
 */
const OtelTraceFlags = Context.GenericTag<{ readonly _: "OtelTraceFlags" }, number>("@effect/opentelemetry/Tracer/OtelTraceFlags")

/** A span link to the producer's span, from the traceparent stored at enqueue. */
export const producerLink = (traceparent: string | null): ReadonlyArray<Tracer.SpanLink> => {
  if (traceparent === null) return []
  const match = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(traceparent)
  if (match === null) return []
  const [, traceId, spanId, flags] = match as unknown as [string, string, string, string]
  const traceFlags = parseInt(flags, 16)
  return [{
    _tag: "SpanLink",
    span: Tracer.externalSpan({
      traceId,
      spanId,
      sampled: (traceFlags & 1) === 1,
      context: Context.make(OtelTraceFlags, traceFlags)
    }),
    attributes: { "webhook.link": "producer" }
  }]
}

const traceparentOf = (span: Tracer.AnySpan) => `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

const createdAtText = isoTimeFormatter()

/** The request body: the exact bytes that are signed and sent. */
export const requestBody = (row: Pick<ClaimedDelivery, "eventType" | "createdAtMs" | "payload">): string =>
  `{"type":${JSON.stringify(row.eventType)},"timestamp":"${createdAtText(row.createdAtMs)}","data":${row.payload}}`

interface Prepared {
  readonly url: string
  readonly secrets: ReadonlyArray<string>
}

export interface Preparation {
  /** What to send, or the attempt's outcome when it cannot be sent. */
  readonly ready: Either.Either<Prepared, AttemptOutcome>
  /** The row's own secret encrypted under the current key, when it is plaintext or on an old key. */
  readonly storeSecret: string | null
}

/** Everything about a row that can be judged before sending; a failure here is the attempt's outcome. */
export const prepare = (row: ClaimedDelivery, keyring: Keyring): Preparation => {
  // Whatever becomes of the attempt, a producer's plaintext secret does not stay at rest.
  const own = row.secretFromRow && row.secret !== null && row.secret !== "" ? keyring.decrypt(row.secret) : undefined
  const storeSecret = own !== undefined && Either.isRight(own) && keyring.needsEncryption(row.secret!) ? keyring.encrypt(own.right) : null
  const fail = (outcome: AttemptOutcome): Preparation => ({ ready: Either.left(outcome), storeSecret })
  if (row.exhausted) return fail(new AttemptsExhausted({ attempts: row.maxAttempts }))
  if (row.endpointId !== null && row.endpointEnabled === false) {
    return fail(new EndpointDisabled({ reason: `endpoint ${row.endpointId} is disabled` }))
  }
  if (row.url === null || row.url.trim() === "") {
    return fail(new InvalidUrl({ reason: "the row has no url and no registered endpoint" }))
  }
  if (row.secret === null || row.secret === "") {
    return fail(new SecretUndecryptable({ reason: "the row has no secret and no registered endpoint" }))
  }
  const secret = own ?? keyring.decrypt(row.secret)
  if (Either.isLeft(secret)) return fail(secret.left)
  const secrets = [secret.right]
  if (row.previousSecret !== null) {
    Either.map(keyring.decrypt(row.previousSecret), (previous) => secrets.push(previous))
  }
  return { ready: Either.right({ url: row.url, secrets }), storeSecret }
}

const statusOf = (decision: Decision) =>
  decision._tag === "Deliver" ? "delivered" as const : decision._tag === "Retry" ? "failed" as const : "dead_letter" as const

/**
 * After a notification, claims again this many ms later (each): producers whose commit raced the
 * notifying one were not notified themselves (see migrations/0001), and their rows become
 * visible within about a commit's fsync. Two steps catch them at once, and late ones soon after.
 */
const SETTLE_STEPS_MS: ReadonlyArray<number> = [4, 15]

/**
 * How long the claim loop waits, while rows are claimed ahead, before it goes round again: it
 * hands back rows held too long, and /healthz sees it going round while slow endpoints hold
 * every slot.
 */
const AHEAD_RECHECK_MS = 1000

/**
 * A row claimed ahead waits at most this long for a slot (or half the lease's slack over the
 * timeout, if less); then it goes back to the queue unattempted, for a worker with a free slot.
 * At full speed rows wait milliseconds; this bounds what slots stuck on slow endpoints cost them.
 */
const AHEAD_MAX_WAIT_MS = 2000

/**
 * An attempt ends this long before its row's lease at the latest (the lease is counted from
 * when the claim came back, a round trip after the database started it), and is not begun with
 * less than MIN_ATTEMPT_MS of lease left: the row goes back to the queue instead. With settings
 * unchanged since the claim neither binds: the lease outlasts the timeout, and a row waits ahead
 * at most half the difference.
 */
const LEASE_MARGIN_MS = 100
const MIN_ATTEMPT_MS = 250

/**
 * How many claims the loop makes at once: two while rows wait (the last claims came back full)
 * and the free slots can take two batches, else one. One claim at a time takes at most a batch
 * per round trip, and a busy database makes that the limit at small batch sizes: at the default
 * of 10, claims taking 7 ms (measured while producers committed 1,000 rows/s) let in about
 * 1,200 rows/s, and rows queued behind the claim loop with slots to spare. Each claim still
 * takes at most WORKER_BATCH_SIZE rows; with the slots full there is one claim, as before.
 */
const claimsAtOnce = (backlog: boolean, freeSlots: number, batchSize: number): 1 | 2 =>
  backlog && freeSlots >= 2 * batchSize ? 2 : 1

/**
 * Rows claimed and not yet started, oldest first: while rows wait, the worker holds up to about
 * a batch and a half beyond its slots, so each claim is a full batch and a freed slot starts the
 * next row at once instead of waiting for a claim's round trip.
 */
interface AheadEntry {
  readonly row: ClaimedDelivery
  readonly claimedMs: number
  /** When the lease this row was claimed under runs out (performance.now() time). */
  readonly leaseEndMs: number
}

class ClaimedAhead {
  private rows: Array<AheadEntry> = []
  private head = 0
  get size(): number {
    return this.rows.length - this.head
  }
  oldestClaimedMs(): number | undefined {
    return this.rows[this.head]?.claimedMs
  }
  put(entry: AheadEntry): void {
    this.rows.push(entry)
  }
  take(): AheadEntry | undefined {
    if (this.head >= this.rows.length) return undefined
    const entry = this.rows[this.head++]!
    // Compact now and then, so taking stays O(1) without the array growing forever.
    if (this.head === this.rows.length) {
      this.rows = []
      this.head = 0
    } else if (this.head > 1024 && this.head * 2 > this.rows.length) {
      this.rows = this.rows.slice(this.head)
      this.head = 0
    }
    return entry
  }
}

/** One attempt under way. */
interface Attempt {
  readonly row: ClaimedDelivery
  readonly startedMs: number
  readonly settings: AppSettings
  readonly span: Tracer.Span | undefined
  cancel: CancelAttempt
  /** Recorded, or handed back at shutdown: nothing more happens to it. */
  done: boolean
}

const noCancel: CancelAttempt = () => undefined

/**
 * Runs the worker until its scope closes; then drains (see the finalizer below).
 *
 * The claim loop is a fiber; each attempt is not. An attempt is a chain of callbacks (prepare,
 * sign, undici dispatch, record) that hands its result to the completer's queue: a fiber per
 * delivery cost about 20 µs of CPU, a tenth of everything else the worker does for it. What
 * structured concurrency gives a fiber, this loop does by hand: every attempt is in `attempts`
 * until it is recorded, the finalizer waits for them within the grace period and cancels and
 * hands back the rest, and a defect in an attempt becomes its outcome.
 */
export const run = Effect.gen(function*() {
  const settings = yield* Settings
  const queue = yield* DeliveryQueue
  const http = yield* DeliveryHttp
  const wakeup = yield* Wakeup
  const metrics = yield* Metrics
  const { instance, workerId } = yield* WorkerIdentity
  const tracing = yield* TraceDeliveries
  const tracer = yield* Effect.tracer
  const clock = yield* Effect.clock
  // Retry decisions step the retry Schedule with this fiber's services (its Random, its Clock).
  const runSync = Runtime.runSync(yield* Effect.runtime<never>())
  const logAttempt = yield* attemptLogger

  const wake = new Signal()
  const room = new Signal()
  const idle = new Signal()
  const attempts = new Set<Attempt>()
  const ahead = new ClaimedAhead()
  // The claim loop waits for the claimed-ahead rows to run low; while draining, the last attempt signals.
  let roomWanted = false
  // Rows were handed back for waiting too long: claim no more ahead until a slot frees.
  let heldTooLong = false
  let draining = false

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
          wake.raise()
        }
      })
  })

  const nowNanos = () => clock.unsafeCurrentTimeNanos()

  // Written only if the row still holds the value it was claimed with.
  const storeEncrypted = (row: ClaimedDelivery, secret: string) => completer.storeSecret({ id: row.id, secret, replaces: row.secret! })

  const begin = (row: ClaimedDelivery, leaseEndMs: number) => {
    const s = current
    // Bounded by the lease the row was claimed under, not by today's settings: after a reload
    // that raised DELIVERY_TIMEOUT, a row claimed under the old lease must not still be in flight
    // when that lease runs out (another worker would send it again).
    const startedMs = performance.now()
    const leaseLeftMs = leaseEndMs - startedMs - LEASE_MARGIN_MS
    if (leaseLeftMs < MIN_ATTEMPT_MS && !row.exhausted) return handBack(row)
    const timeoutMs = Math.min(s.deliveryTimeoutMs, leaseLeftMs)
    const attempt: Attempt = { row, startedMs, settings: s, span: tracing ? startSpan(tracer, nowNanos(), row) : undefined, cancel: noCancel, done: false }
    attempts.add(attempt)
    try {
      const keyring = Option.getOrThrowWith(keyringOf(s), () => new Error("WEBHOOK_SECRET_ENCRYPTION_KEY is not set"))
      const { ready, storeSecret } = prepare(row, keyring)
      if (storeSecret !== null) storeEncrypted(row, storeSecret)
      if (Either.isLeft(ready)) return settle(attempt, { outcome: ready.left, responseBody: null })
      // Encoded once: the signature and the socket then take the same bytes, with no
      // conversion of their own (undici would measure and encode a string again).
      const body = Buffer.from(requestBody(row))
      const timestamp = Math.floor(clock.unsafeCurrentTimeMillis() / 1000)
      const headers: Record<string, string> = {
        "webhook-id": row.id,
        "webhook-timestamp": String(timestamp),
        "webhook-signature": signatureHeader(ready.right.secrets, row.id, timestamp, body),
        "user-agent": userAgent
      }
      const request = { url: ready.right.url, body, timeoutMs, allowPrivateNetworks: s.allowPrivateNetworks, headers }
      if (attempt.span === undefined) {
        attempt.cancel = http.start(request, (reply) => settle(attempt, reply))
        return
      }
      headers.traceparent = traceparentOf(attempt.span)
      const call = startClientSpan(tracer, nowNanos(), attempt.span, checkUrl(request.url, request.allowPrivateNetworks))
      attempt.cancel = http.start(request, (reply) => {
        if (call !== undefined) {
          call.attribute(...replySpanAttribute(reply))
          call.end(nowNanos(), Exit.void)
        }
        settle(attempt, reply)
      })
    } catch (defect) {
      settle(attempt, { outcome: new WorkerDefect({ detail: defect instanceof Error ? defect.message : String(defect) }), responseBody: null })
    }
  }

  const settle = (attempt: Attempt, reply: HttpReply) => {
    if (attempt.done) return
    attempt.done = true
    attempts.delete(attempt)
    const { row, settings: s, span } = attempt
    const durationMs = performance.now() - attempt.startedMs
    const outcome = reply.outcome
    try {
      const decision = decisionWithoutSchedule(outcome) ?? runSync(decide(outcome, row.attempt, row.maxAttempts, s))
      const completion: Completion = {
        id: row.id,
        attempt: row.attempt,
        status: statusOf(decision),
        retryDelayMs: decision._tag === "Retry" ? Duration.toMillis(decision.delay) : null,
        responseStatus: responseStatusOf(outcome),
        error: describe(outcome),
        reason: reasonOf(outcome),
        responseBody: reply.responseBody,
        durationMs,
        disableEndpoint: outcome._tag === "Gone" && row.endpointId !== null ? row.endpointId : null,
        span
      }
      completer.record(completion)
      observe(metrics, row, completion)
      if (span !== undefined) {
        for (const [key, value] of Object.entries(spanResultAttributes(completion))) span.attribute(key, value)
        span.end(nowNanos(), Exit.void)
      }
      logAttempt(attemptLogFields(row, completion, span))
    } catch (defect) {
      // Only a bug gets here; the row's lease runs out and another attempt follows.
      logAttempt({ service: "worker", delivery_id: row.id, attempt: row.attempt, outcome: "unrecorded", error: defect instanceof Error ? defect.message : String(defect) })
    }
    startAhead()
    metrics.inFlight(attempts.size)
    if (roomWanted && roomToClaim()) {
      roomWanted = false
      room.raise()
    }
    if (draining && attempts.size === 0) idle.raise()
  }

  const maxWaitMs = () => Math.min(AHEAD_MAX_WAIT_MS, (current.leaseMs - current.deliveryTimeoutMs) / 2)

  const handBack = (row: ClaimedDelivery) => {
    heldTooLong = true
    // Claimed means encrypted at rest, attempted or not. Only plaintext: re-keying a value under
    // an old key is for an attempt (or rotate-key), not for a row this worker did not touch.
    const keyring = Option.getOrUndefined(keyringOf(current))
    if (keyring !== undefined && row.secretFromRow && row.secret !== null && row.secret !== "" && !isEncrypted(row.secret)) {
      storeEncrypted(row, keyring.encrypt(row.secret))
    }
    completer.release({ id: row.id, attempt: row.attempt, started: false })
  }

  const reportAhead = () => metrics.claimedAhead(ahead.size)

  // Hands back the rows that have waited too long for a slot (oldest first, so they lead), then
  // starts the rest while slots are free. Not re-entered: an attempt that settles at once (a
  // refused URL) comes back through settle, and the loop here starts the next row.
  let starting = false
  const startAhead = () => {
    if (starting || draining || ahead.size === 0) return
    starting = true
    try {
      const staleBefore = performance.now() - maxWaitMs()
      while (ahead.size > 0 && ahead.oldestClaimedMs()! < staleBefore) handBack(ahead.take()!.row)
      while (ahead.size > 0 && attempts.size < current.maxConcurrentDeliveries) {
        const entry = ahead.take()!
        begin(entry.row, entry.leaseEndMs)
      }
    } finally {
      starting = false
    }
    reportAhead()
  }

  // A claim is due once the rows claimed ahead are fewer than half a batch (a full batch is then
  // in hand before the free slots could empty it, so the slots never wait on a claim), unless
  // rows were just handed back for waiting and every slot is still busy.
  const roomToClaim = () =>
    ahead.size < Math.ceil(current.batchSize / 2) && !(heldTooLong && attempts.size >= current.maxConcurrentDeliveries)

  const waitForRoom = Effect.suspend(() => {
    if (roomToClaim()) return Effect.void
    roomWanted = true
    return room.wait(AHEAD_RECHECK_MS)
  })

  const claimLoop = Effect.gen(function*() {
    let backlog = true
    let waitMs = 0
    // After a notification, claims shortly after (SETTLE_STEPS_MS): the trigger notifies once per
    // wave of concurrent commits, and a commit that raced the notifier's may not be visible yet.
    let settleStep: number = SETTLE_STEPS_MS.length
    while (true) {
      metrics.loopHeartbeat()
      current = yield* settings.get
      // Hands back rows held too long, and fills slots a reload added.
      startAhead()
      if (!roomToClaim()) {
        yield* waitForRoom
        continue
      }
      if (!backlog) {
        const woken = yield* wake.wait(ahead.size > 0 ? Math.min(waitMs, AHEAD_RECHECK_MS) : waitMs)
        settleStep = woken ? 0 : settleStep + 1
        current = yield* settings.get
      }
      const limit = current.batchSize
      heldTooLong = false
      const leaseMs = current.leaseMs
      const claimOnce = retryUntilDone(queue.claim(workerId, limit, leaseMs), (error) =>
        // Retrying on purpose (database down) is not a stuck loop: /healthz stays green, /readyz says why.
        Effect.sync(() => metrics.loopHeartbeat()).pipe(
          Effect.zipRight(Effect.logWarning("Claiming deliveries failed; retrying")),
          Effect.annotateLogs({ error: error.message })
        )).pipe(
        Effect.tap((rows) =>
          Effect.sync(() => {
            const claimedMs = performance.now()
            const leaseEndMs = claimedMs + leaseMs
            // A row with no attempts left is dead-lettered at once: it needs no slot, and handed
            // back from the queue ahead its attempt, which this claim did not count, would be
            // uncounted and sent once more than max_attempts.
            for (const row of rows) {
              if (row.exhausted) begin(row, leaseEndMs)
              else ahead.put({ row, claimedMs, leaseEndMs })
            }
            startAhead()
          })
        )
      )
      // Claim and hand over as one step, so shutdown never strands claimed rows between the two
      // (Effect.all runs both claims with this region's uninterruptibility).
      const batches: ReadonlyArray<ReadonlyArray<ClaimedDelivery>> = yield* Effect.uninterruptible(
        claimsAtOnce(backlog, current.maxConcurrentDeliveries - attempts.size - ahead.size, limit) === 1
          ? Effect.map(claimOnce, (rows) => [rows])
          : Effect.all([claimOnce, claimOnce], { concurrency: "unbounded" })
      )
      const claimed = batches.flat()
      if (claimed.length > 0) {
        metrics.claimed(claimed.length)
        metrics.inFlight(attempts.size)
        const reclaimed = claimed.filter((row) => row.reclaimed).length
        if (reclaimed > 0) metrics.leasesReclaimed(reclaimed)
      }
      backlog = batches.every((rows) => rows.length === limit)
      if (!backlog && settleStep < SETTLE_STEPS_MS.length) {
        waitMs = SETTLE_STEPS_MS[settleStep]!
      } else if (!backlog) {
        const next = yield* queue.nextDueInMs.pipe(Effect.orElseSucceed(() => null))
        waitMs = next === null ? current.pollIntervalMs : Math.min(current.pollIntervalMs, Math.max(next, 5))
      }
    }
  })

  // Best effort: a database that is down now is the claim loop's to wait for.
  yield* queue.warmUp(workerId, WORKER_POOL_SIZE).pipe(
    Effect.timeoutOption(Duration.seconds(5)),
    Effect.catchAll((error) => Effect.logDebug("Warming up the queue's statements failed").pipe(Effect.annotateLogs({ error: error.message })))
  )
  yield* wakeup.subscribe(() => wake.raise())
  // A bug in the loop must not silently stop all claiming: it is logged and the loop starts over.
  const loop = yield* Effect.forkScoped(
    claimLoop.pipe(
      Effect.catchAllCause((cause) =>
        Cause.isInterruptedOnly(cause)
          ? Effect.failCause(cause)
          : Effect.logError("The claim loop failed; starting it again", cause).pipe(Effect.zipRight(Effect.sleep(Duration.seconds(1))))
      ),
      Effect.forever
    )
  )

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
      draining = true
      // Rows claimed ahead were never attempted: back to the queue at once, the attempt uncounted.
      for (let entry = ahead.take(); entry !== undefined; entry = ahead.take()) handBack(entry.row)
      reportAhead()
      if (attempts.size > 0) {
        yield* Effect.logInfo("Stopping: waiting for in-flight deliveries").pipe(Effect.annotateLogs({ in_flight: attempts.size }))
        const finished = yield* idle.wait(current.shutdownGracePeriodMs)
        if (!finished && attempts.size > 0) {
          yield* Effect.logWarning("Grace period over: handing back unfinished deliveries").pipe(
            Effect.annotateLogs({ handed_back: attempts.size })
          )
          for (const attempt of attempts) {
            attempt.done = true
            attempt.cancel()
            attempt.span?.end(nowNanos(), Exit.void)
            // It stays counted: the request may have reached the receiver.
            completer.release({ id: attempt.row.id, attempt: attempt.row.attempt, started: true })
          }
          attempts.clear()
          metrics.inFlight(0)
        }
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
 * The per-attempt "Delivering webhook" line. Under our own logger it is written directly (one
 * JSON line, no fiber); under any other (a host application's) it goes through Effect's logger
 * from a fiber of its own, with the fields as annotations so every logger prints them.
 */
const attemptLogger = Effect.gen(function*() {
  const direct = yield* Log.directLog
  if (Option.isSome(direct)) {
    const write = direct.value
    return (fields: Record<string, unknown>) => write("INFO", "Delivering webhook", fields)
  }
  const pending: Array<Record<string, unknown>> = []
  const signal = yield* Queue.sliding<void>(1)
  const flush = Effect.suspend(() =>
    Effect.forEach(pending.splice(0), (fields) => Effect.logInfo("Delivering webhook").pipe(Effect.annotateLogs(fields)), { discard: true })
  )
  yield* Effect.forkScoped(Effect.forever(Queue.take(signal).pipe(Effect.zipRight(flush))))
  yield* Effect.addFinalizer(() => flush)
  return (fields: Record<string, unknown>) => {
    pending.push(fields)
    signal.unsafeOffer(undefined)
  }
})

/**
 * One span per attempt. With the producer's stored traceparent it is a child of (and linked to)
 * the producer's span, so one trace shows the request that caused the webhook and every attempt;
 * without one it is a root span.
 */
const startSpan = (tracer: Tracer.Tracer, startTime: bigint, row: ClaimedDelivery): Tracer.Span => {
  const links = producerLink(row.traceparent)
  const span = tracer.span(
    "webhook.deliver",
    links[0] === undefined ? Option.none() : Option.some(links[0].span),
    Context.empty(),
    links,
    startTime,
    "producer"
  )
  const attributes = definedOnly({
    "webhook.id": row.id,
    "webhook.event_type": row.eventType,
    "webhook.attempt": row.attempt,
    "webhook.max_attempts": row.maxAttempts,
    "webhook.endpoint_id": row.endpointId,
    "server.address": destinationHost(row.url)
  })
  for (const [key, value] of Object.entries(attributes)) span.attribute(key, value)
  return span
}

/** The attempt's HTTP call, as a client span under it (none for a URL refused before sending). */
const startClientSpan = (
  tracer: Tracer.Tracer,
  startTime: bigint,
  parent: Tracer.Span,
  url: ReturnType<typeof checkUrl>
): Tracer.Span | undefined => {
  if (!(url instanceof URL)) return undefined
  const span = tracer.span("http.client POST", Option.some(parent), Context.empty(), [], startTime, "client")
  for (const [key, value] of Object.entries(clientSpanAttributes(url))) span.attribute(key, value)
  return span
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

const attemptLogFields = (row: ClaimedDelivery, completion: Completion, span: Tracer.Span | undefined) => {
  const fields: Record<string, unknown> = {
    // The worker's annotation, for the direct writer (which does not read annotations).
    service: "worker",
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
  if (span !== undefined) {
    fields.trace_id = span.traceId
    fields.span_id = span.spanId
  }
  return fields
}

const hostOf = memoizeBounded((url) => {
  try {
    return new URL(url).host
  } catch {
    // Never the text itself: a malformed URL may still carry a token.
    return "(invalid URL)"
  }
}, 10_000)

/** Only the host of a destination is logged: paths often carry tokens (e.g. chat webhooks). */
export const destinationHost = (url: string | null): string | null => (url === null ? null : hostOf(url))

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
