import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { SecretUndecryptable } from "../crypto/Keyring.js"
import { delayAfterAttempt, honourRetryAfter, type RetrySettings } from "./RetryPolicy.js"

export { SecretUndecryptable }

/**
 * What one delivery attempt came to. Every path of an attempt ends in exactly one of these, and
 * `isRetryable` / `decide` below are the only places that turn them into a row's next status.
 */
export type AttemptOutcome =
  | Delivered
  | RetryableStatus
  | Gone
  | RejectedStatus
  | DeliveryTimeout
  | ConnectionFailed
  | DnsFailed
  | DestinationBlocked
  | InvalidUrl
  | SecretUndecryptable
  | EndpointDisabled
  | AttemptsExhausted
  | WorkerDefect

/** 2xx. */
export class Delivered extends Data.TaggedClass("Delivered")<{ readonly status: number }> {}

/** 5xx, 408 or 429; Retry-After is kept for 429 and 503. */
export class RetryableStatus extends Data.TaggedClass("RetryableStatus")<{
  readonly status: number
  readonly retryAfter: Option.Option<Duration.Duration>
}> {}

/** 410: the receiver says the endpoint is gone for good. */
export class Gone extends Data.TaggedClass("Gone")<{ readonly status: number }> {}

/** Any other 1xx, 3xx or 4xx (redirects are not followed). */
export class RejectedStatus extends Data.TaggedClass("RejectedStatus")<{ readonly status: number }> {}

export class DeliveryTimeout extends Data.TaggedError("DeliveryTimeout")<{ readonly timeoutMs: number }> {}

/** Refused, reset, TLS failure or any other transport error after DNS. */
export class ConnectionFailed extends Data.TaggedError("ConnectionFailed")<{
  readonly code: string
  readonly detail: string
}> {}

export class DnsFailed extends Data.TaggedError("DnsFailed")<{ readonly hostname: string; readonly code: string }> {}

/** The SSRF guard refused the destination's address. */
export class DestinationBlocked extends Data.TaggedError("DestinationBlocked")<{
  readonly hostname: string
  readonly address: string
  readonly range: string
}> {}

export class InvalidUrl extends Data.TaggedError("InvalidUrl")<{ readonly reason: string }> {}

/** The registered endpoint was disabled (by an operator or a 410) or deleted. */
export class EndpointDisabled extends Data.TaggedError("EndpointDisabled")<{ readonly reason: string }> {}

/** The row came back from an expired lease with no attempts left: the last attempt's outcome is unknown. */
export class AttemptsExhausted extends Data.TaggedError("AttemptsExhausted")<{ readonly attempts: number }> {}

/** A bug met while handling the row; retried on the schedule so one bad row cannot loop forever. */
export class WorkerDefect extends Data.TaggedError("WorkerDefect")<{ readonly detail: string }> {}

/** Whether another attempt could succeed. The single rule, per SPEC.md "Outcome of an attempt". */
export const isRetryable = (outcome: AttemptOutcome): boolean => {
  switch (outcome._tag) {
    case "RetryableStatus":
    case "DeliveryTimeout":
    case "ConnectionFailed":
    case "DnsFailed":
    case "WorkerDefect":
      return true
    case "Delivered":
    case "Gone":
    case "RejectedStatus":
    case "DestinationBlocked":
    case "InvalidUrl":
    case "SecretUndecryptable":
    case "EndpointDisabled":
    case "AttemptsExhausted":
      return false
  }
}

/** A short, stable class for metrics labels and the log's `reason` column. */
export const reasonOf = (outcome: AttemptOutcome): string => {
  switch (outcome._tag) {
    case "Delivered":
      return "delivered"
    case "RetryableStatus":
      return outcome.status === 429 ? "http_429" : outcome.status === 408 ? "http_408" : "http_5xx"
    case "Gone":
      return "http_410"
    case "RejectedStatus":
      return outcome.status >= 400 ? "http_4xx" : outcome.status >= 300 ? "http_3xx" : "http_1xx"
    case "DeliveryTimeout":
      return "timeout"
    case "ConnectionFailed":
      return "connection"
    case "DnsFailed":
      return "dns"
    case "DestinationBlocked":
      return "blocked_destination"
    case "InvalidUrl":
      return "invalid_url"
    case "SecretUndecryptable":
      return "undecryptable_secret"
    case "EndpointDisabled":
      return "endpoint_disabled"
    case "AttemptsExhausted":
      return "attempts_exhausted"
    case "WorkerDefect":
      return "internal_error"
  }
}

/** The HTTP status to store in `last_response_status`, when there was a response. */
export const responseStatusOf = (outcome: AttemptOutcome): number | null => {
  switch (outcome._tag) {
    case "Delivered":
    case "RetryableStatus":
    case "Gone":
    case "RejectedStatus":
      return outcome.status
    default:
      return null
  }
}

/** One line for `last_error` saying why; null when delivered. */
export const describe = (outcome: AttemptOutcome): string | null => {
  switch (outcome._tag) {
    case "Delivered":
      return null
    case "RetryableStatus":
      return `HTTP ${outcome.status}${Option.match(outcome.retryAfter, {
        onNone: () => "",
        onSome: (after) => ` (Retry-After ${Math.round(Duration.toSeconds(after))}s)`
      })}`
    case "Gone":
      return "HTTP 410 Gone: the receiver retired this endpoint; it has been disabled"
    case "RejectedStatus":
      return `HTTP ${outcome.status}: the receiver rejected the request; retrying cannot help`
    case "DeliveryTimeout":
      return `timed out after ${outcome.timeoutMs / 1000}s (DELIVERY_TIMEOUT)`
    case "ConnectionFailed":
      return `connection failed (${outcome.code}): ${outcome.detail}`
    case "DnsFailed":
      return `DNS lookup of ${outcome.hostname} failed (${outcome.code})`
    case "DestinationBlocked":
      return `blocked destination: ${
        outcome.hostname === outcome.address || outcome.hostname === `[${outcome.address}]`
          ? outcome.address
          : `${outcome.hostname} is ${outcome.address},`
      } a ${outcome.range} address (set WEBHOOK_ALLOW_PRIVATE_NETWORKS=true to allow)`
    case "InvalidUrl":
      return `invalid URL: ${outcome.reason}`
    case "SecretUndecryptable":
      return `undecryptable secret: ${outcome.reason}`
    case "EndpointDisabled":
      return `endpoint disabled: ${outcome.reason}`
    case "AttemptsExhausted":
      return `no attempts left: attempt ${outcome.attempts} was cut short (its worker crashed, lost its lease or stopped during it), its outcome is unknown`
    case "WorkerDefect":
      return `internal error: ${outcome.detail}`
  }
}

/** The row's next state after an attempt. */
export type Decision =
  | { readonly _tag: "Deliver" }
  | { readonly _tag: "Retry"; readonly delay: Duration.Duration }
  | { readonly _tag: "DeadLetter" }

const deliver: Decision = { _tag: "Deliver" }
const deadLetter: Decision = { _tag: "DeadLetter" }

/**
 * The decision when no retry schedule is needed: delivered, or dead-lettered for a permanent
 * outcome; undefined for a retryable one. Lets a caller skip running an Effect on the hot path.
 */
export const decisionWithoutSchedule = (outcome: AttemptOutcome): Decision | undefined =>
  outcome._tag === "Delivered" ? deliver : isRetryable(outcome) ? undefined : deadLetter

/**
 * Delivered, retried after the schedule's delay for this attempt (Retry-After honoured for 429
 * and 503), or dead-lettered: when the outcome is permanent or `attempt` was the last allowed.
 */
export const decide = (
  outcome: AttemptOutcome,
  attempt: number,
  maxAttempts: number,
  settings: RetrySettings
): Effect.Effect<Decision> => {
  const immediate = decisionWithoutSchedule(outcome)
  if (immediate !== undefined) return Effect.succeed(immediate)
  return Effect.map(delayAfterAttempt(settings, attempt, maxAttempts), (delay) =>
    Option.match(delay, {
      onNone: () => deadLetter,
      onSome: (scheduled): Decision => ({
        _tag: "Retry",
        delay: outcome._tag === "RetryableStatus"
          ? honourRetryAfter(settings, scheduled, outcome.retryAfter)
          : scheduled
      })
    }))
}

/** Classifies an HTTP response status (and its Retry-After) into an outcome. */
export const classifyStatus = (status: number, retryAfter: () => Option.Option<Duration.Duration>): AttemptOutcome => {
  if (status >= 200 && status < 300) return new Delivered({ status })
  if (status === 410) return new Gone({ status })
  if (status >= 500 || status === 408 || status === 429) {
    return new RetryableStatus({
      status,
      retryAfter: status === 429 || status === 503 ? retryAfter() : Option.none()
    })
  }
  return new RejectedStatus({ status })
}
