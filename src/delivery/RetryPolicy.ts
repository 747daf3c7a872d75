import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"

export interface RetrySettings {
  readonly retryBaseDelayMs: number
  readonly retryBackoffFactor: number
  readonly retryMaxDelayMs: number
}

/** Jitter bounds of `Schedule.jittered`: each delay is scaled by a uniform factor in this range. */
export const JITTER_MIN = 0.8
export const JITTER_MAX = 1.2

/**
 * The retry schedule: exponential from RETRY_BASE_DELAY by RETRY_BACKOFF_FACTOR, jittered, each
 * delay capped at RETRY_MAX_DELAY, and at most `maxAttempts - 1` retries (so `maxAttempts`
 * attempts in all). Its n-th delay is the wait after the n-th failed attempt.
 */
export const schedule = (settings: RetrySettings, maxAttempts: number) =>
  Schedule.exponential(Duration.millis(settings.retryBaseDelayMs), settings.retryBackoffFactor).pipe(
    Schedule.jittered,
    Schedule.modifyDelay((_, delay) => Duration.min(delay, Duration.millis(settings.retryMaxDelayMs))),
    Schedule.intersect(Schedule.recurs(maxAttempts - 1))
  )

/**
 * Retries are durable: instead of sleeping in memory, the worker steps the schedule to the row's
 * attempt number and stores the resulting `next_retry_at`. None when `attempt` was the last one.
 */
export const delayAfterAttempt = (
  settings: RetrySettings,
  attempt: number,
  maxAttempts: number
): Effect.Effect<Option.Option<Duration.Duration>> =>
  attempt >= maxAttempts
    ? Effect.succeedNone
    : Schedule.run(Schedule.delays(schedule(settings, maxAttempts)), 0, Array.from({ length: attempt }, () => undefined)).pipe(
      Effect.map((delays) => Chunk.get(delays, attempt - 1))
    )

/**
 * The delay before the next attempt when the receiver sent Retry-After (429/503): never earlier
 * than the receiver asked, never later than RETRY_MAX_DELAY.
 */
export const honourRetryAfter = (
  settings: RetrySettings,
  scheduled: Duration.Duration,
  retryAfter: Option.Option<Duration.Duration>
): Duration.Duration =>
  Option.match(retryAfter, {
    onNone: () => scheduled,
    onSome: (asked) => Duration.min(Duration.max(scheduled, asked), Duration.millis(settings.retryMaxDelayMs))
  })

/** Parses a Retry-After header: delta-seconds or an HTTP-date, relative to `nowMs`. */
export const parseRetryAfter = (header: string | undefined, nowMs: number): Option.Option<Duration.Duration> => {
  if (header === undefined) return Option.none()
  const text = header.trim()
  if (/^\d+$/.test(text)) return Option.some(Duration.seconds(Number(text)))
  const date = Date.parse(text)
  if (Number.isNaN(date)) return Option.none()
  return Option.some(Duration.millis(Math.max(0, date - nowMs)))
}
