import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"

const FIRST_WAIT_MS = 100
const LONGEST_WAIT_MS = 5000

/** The wait before the `retry`-th retry (0-based): 0.1 s doubling each time, at most 5 s. */
const waitBefore = (retry: number) => Duration.millis(Math.min(FIRST_WAIT_MS * 2 ** Math.min(retry, 16), LONGEST_WAIT_MS))

/**
 * Runs `effect` until it succeeds, calling `onError` on each failure and waiting 0.1 s, 0.2 s,
 * 0.4 s … (at most 5 s) between tries: for statements the worker cannot do without (a claim, a
 * result write) while the database is away.
 *
 * Each try runs as the caller runs it (a claim and its hand-over inside an uninterruptible
 * region stay one step), but the waits between tries can always be interrupted: a shutdown
 * while the database is away must not wait for the database to come back. A plain loop, not
 * `Effect.retry`, whose schedule driver cost every run about 18 µs, success or not.
 */
export const retryUntilDone = <A, E, R>(effect: Effect.Effect<A, E, R>, onError: (error: E) => Effect.Effect<void>): Effect.Effect<A, E, R> => {
  const attempt = (retry: number): Effect.Effect<A, E, R> =>
    Effect.catchAll(effect, (error) =>
      onError(error).pipe(
        Effect.zipRight(Effect.interruptible(Effect.sleep(waitBefore(retry)))),
        Effect.zipRight(Effect.suspend(() => attempt(retry + 1)))
      ))
  return attempt(0)
}
