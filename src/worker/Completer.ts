import type * as SqlError from "@effect/sql/SqlError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Queue from "effect/Queue"
import type * as Tracer from "effect/Tracer"
import { retryUntilDone } from "../lib/Retry.js"
import { type Completion, DeliveryQueue, type Release, type SecretUpdate } from "../queue/DeliveryQueue.js"

export interface CompleterOptions {
  readonly workerId: string
  readonly audit: () => boolean
  /** Called with the completions whose lease had passed to another worker (not recorded). */
  readonly onLeaseLost: (completions: ReadonlyArray<Completion>) => Effect.Effect<void>
  /** Called after a batch is recorded. */
  readonly onRecorded: (completions: ReadonlyArray<Completion>) => Effect.Effect<void>
}

const MAX_BATCH = 1000
const LINGER = Duration.millis(10)
const LINGER_ENOUGH = 200

/**
 * One write records many attempts, so it cannot be the child of one attempt's span: when the
 * attempts are traced it gets its own span, linked to each of them (its SQL spans are its children).
 */
const traceWrite = (batch: ReadonlyArray<Completion>) => <A, E, R>(write: Effect.Effect<A, E, R>) => {
  const links = batch.flatMap((c): Array<Tracer.SpanLink> => (c.span === undefined ? [] : [{ _tag: "SpanLink", span: c.span, attributes: {} }]))
  return links.length === 0
    ? write
    : Effect.withSpan(write, "webhook.record", { root: true, links, attributes: { "webhook.batch_size": batch.length } })
}

/** PostgreSQL's SQLSTATE of a failed statement, when it got that far. */
const sqlStateOf = (error: SqlError.SqlError): string | undefined => {
  const cause: unknown = error.cause
  return typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string" ? cause.code : undefined
}

/**
 * A statement refused for what it carries (SQLSTATE class 22, data exception, or 23, integrity
 * constraint violation): retrying the same values fails the same way, every time.
 */
const refusedForItsValues = (error: SqlError.SqlError): boolean => {
  const state = sqlStateOf(error)
  return state !== undefined && (state.startsWith("22") || state.startsWith("23"))
}

/** What a result write came to: the ids recorded, and the results PostgreSQL refused outright. */
interface Written {
  readonly recorded: ReadonlySet<string>
  readonly refused: ReadonlyArray<Completion>
}

/**
 * The longest run of results from the front, at most `max`, with no row twice. The statement
 * joins its audit rows and a 410's endpoint-disable on the row id, so two results for one row
 * in one statement (a worker that re-claimed its own expired row while the old result waited)
 * would both be logged, and the stale one's 410 would count; apart, the stale one is refused by
 * the attempt guard alone.
 */
const distinctPrefix = (completions: ReadonlyArray<Completion>, max: number): ReadonlyArray<Completion> => {
  const ids = new Set<string>()
  let end = 0
  while (end < completions.length && end < max && !ids.has(completions[end]!.id)) ids.add(completions[end++]!.id)
  return completions.slice(0, end)
}

/**
 * Group commit for attempt results: a result waits LINGER for others, results that arrive while
 * a write is under way wait for the next linger, and the next write takes them all, so under load
 * one statement records a linger's worth of attempts (or more), never a few stragglers. A failed
 * write (database restart) is retried with backoff; the results stay queued meanwhile.
 */
export const make = (options: CompleterOptions) =>
  Effect.gen(function*() {
    const queue = yield* DeliveryQueue
    const completions: Array<Completion> = []
    const releases: Array<Release> = []
    const secrets: Array<SecretUpdate> = []
    const work = yield* Queue.sliding<void>(1)
    const idle = yield* Queue.sliding<void>(1)
    let writing = false

    const retryWrites = <A>(write: Effect.Effect<A, SqlError.SqlError>) =>
      retryUntilDone(write, (error) =>
        Effect.logWarning("Recording delivery results failed; retrying").pipe(
          Effect.annotateLogs({ error: error.message, pending: completions.length + releases.length + secrets.length })
        ))

    // One write, retried while the database is away; a refusal for its values is its answer,
    // not something to retry.
    const completeOnce = (batch: ReadonlyArray<Completion>, audit: boolean) =>
      retryWrites(
        queue.complete(options.workerId, batch, audit).pipe(
          Effect.map((recorded): Either.Either<ReadonlySet<string>, SqlError.SqlError> => Either.right(recorded)),
          Effect.catchIf(refusedForItsValues, (refusal) => Effect.succeed(Either.left(refusal)))
        )
      )

    // One refused result would fail its whole batch on every retry and hold back every result
    // after it. A refused batch is split until the result at fault is alone; that one is
    // written again without its response body and error text (what a receiver or an error
    // message put there), and if even that is refused, it is left unrecorded: its lease runs
    // out and the row is attempted again. Each part is retried on its own while the database
    // is away, so a part already written is never written twice.
    const writeCompletions = (batch: ReadonlyArray<Completion>, audit: boolean): Effect.Effect<Written, SqlError.SqlError> =>
      Effect.flatMap(completeOnce(batch, audit), (written) => {
        if (Either.isRight(written)) return Effect.succeed<Written>({ recorded: written.right, refused: [] })
        const refusal = written.left
        if (batch.length > 1) {
          const half = Math.ceil(batch.length / 2)
          return Effect.zipWith(writeCompletions(batch.slice(0, half), audit), writeCompletions(batch.slice(half), audit), (a, b) => ({
            recorded: new Set([...a.recorded, ...b.recorded]),
            refused: [...a.refused, ...b.refused]
          }))
        }
        const [refused] = batch as [Completion]
        const stripped: Completion = {
          ...refused,
          responseBody: null,
          error: refused.error === null ? null : `${refused.reason} (its error text was refused by PostgreSQL, SQLSTATE ${sqlStateOf(refusal)})`
        }
        return Effect.logWarning("A delivery result was refused by PostgreSQL; storing it without its response body and error text").pipe(
          Effect.annotateLogs({ delivery_id: refused.id, attempt: refused.attempt, error: refusal.message }),
          Effect.zipRight(completeOnce([stripped], audit)),
          Effect.flatMap((again) =>
            Either.isRight(again)
              ? Effect.succeed<Written>({ recorded: again.right, refused: [] })
              : Effect.logError("A delivery result could not be stored at all; its lease will run out and the row will be attempted again").pipe(
                Effect.annotateLogs({ delivery_id: refused.id, attempt: refused.attempt, error: again.left.message }),
                Effect.as<Written>({ recorded: new Set(), refused: [refused] })
              )
          )
        )
      })

    // Straight on only while a full linger's worth waits. Results left over came in during the
    // write, and each offered `work` then, so the loop comes round for them after a linger.
    const writePending = Effect.gen(function*() {
      do {
        // Before anything else: a plaintext secret is encrypted at rest as soon as possible.
        if (secrets.length > 0) {
          const batch = secrets.slice(0, MAX_BATCH)
          yield* retryWrites(queue.storeSecrets(batch))
          secrets.splice(0, batch.length)
        }
        if (releases.length > 0) {
          const batch = releases.slice(0, MAX_BATCH)
          yield* retryWrites(queue.release(options.workerId, batch))
          releases.splice(0, batch.length)
        }
        if (completions.length > 0) {
          const batch = distinctPrefix(completions, MAX_BATCH)
          const { recorded, refused } = yield* writeCompletions(batch, options.audit()).pipe(traceWrite(batch))
          completions.splice(0, batch.length)
          if (recorded.size + refused.length < batch.length) {
            yield* options.onLeaseLost(batch.filter((c) => !recorded.has(c.id) && !refused.includes(c)))
          }
          yield* options.onRecorded(batch.filter((c) => recorded.has(c.id)))
        }
      } while (completions.length >= LINGER_ENOUGH || releases.length > 0 || secrets.length > 0)
    })

    yield* Effect.forkScoped(
      Effect.forever(
        Queue.take(work).pipe(
          // Let a few more results arrive: one statement for many rows costs PostgreSQL far less
          // than many for few. Results are already final; only the row's status waits.
          Effect.zipRight(Effect.suspend(() => (completions.length >= LINGER_ENOUGH ? Effect.void : Effect.sleep(LINGER)))),
          Effect.zipRight(Effect.sync(() => { writing = true })),
          // A batch in the middle of being written is finished even on shutdown.
          Effect.zipRight(Effect.uninterruptible(writePending)),
          Effect.ensuring(Effect.sync(() => {
            writing = false
            idle.unsafeOffer(undefined)
          }))
        )
      )
    )

    return {
      record: (completion: Completion) => {
        completions.push(completion)
        work.unsafeOffer(undefined)
      },
      release: (release: Release) => {
        releases.push(release)
        work.unsafeOffer(undefined)
      },
      storeSecret: (update: SecretUpdate) => {
        secrets.push(update)
        work.unsafeOffer(undefined)
      },
      /** Waits until everything recorded so far is written. */
      drain: Effect.gen(function*() {
        while (writing || completions.length > 0 || releases.length > 0 || secrets.length > 0) {
          work.unsafeOffer(undefined)
          yield* Queue.take(idle)
        }
      }),
      pending: () => completions.length + releases.length + secrets.length
    }
  })

export type Completer = Effect.Effect.Success<ReturnType<typeof make>>
