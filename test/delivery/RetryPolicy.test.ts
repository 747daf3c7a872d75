import { it } from "@effect/vitest"
import { Duration, Effect, FastCheck as fc, Option } from "effect"
import { describe, expect } from "vitest"
import {
  type AttemptOutcome,
  AttemptsExhausted,
  classifyStatus,
  ConnectionFailed,
  decide,
  Delivered,
  DeliveryTimeout,
  DestinationBlocked,
  DnsFailed,
  EndpointDisabled,
  Gone,
  InvalidUrl,
  isRetryable,
  RejectedStatus,
  RetryableStatus,
  SecretUndecryptable,
  WorkerDefect
} from "../../src/delivery/Outcome.js"
import { delayAfterAttempt, honourRetryAfter, JITTER_MAX, JITTER_MIN, parseRetryAfter } from "../../src/delivery/RetryPolicy.js"

const settings = fc.record({
  retryBaseDelayMs: fc.integer({ min: 0, max: 120_000 }),
  retryBackoffFactor: fc.double({ min: 1, max: 10, noNaN: true }),
  retryMaxDelayMs: fc.integer({ min: 0, max: 86_400_000 })
}).filter((s) => s.retryMaxDelayMs >= s.retryBaseDelayMs)
const maxAttempts = fc.integer({ min: 1, max: 30 })

/**
 * What SPEC.md's "Outcome of an attempt" table says of every outcome tag, and how to draw one.
 * The mapped type makes a new tag in Outcome.ts a compile error here until it is classified.
 */
type Expected = "delivered" | "retryable" | "permanent"
const outcomes: { readonly [K in AttemptOutcome["_tag"]]: readonly [Expected, fc.Arbitrary<Extract<AttemptOutcome, { _tag: K }>>] } = {
  Delivered: ["delivered", fc.integer({ min: 200, max: 299 }).map((status) => new Delivered({ status }))],
  RetryableStatus: ["retryable", fc.oneof(fc.integer({ min: 500, max: 599 }), fc.constantFrom(408, 429)).map((status) =>
    new RetryableStatus({ status, retryAfter: Option.none() }))],
  DeliveryTimeout: ["retryable", fc.integer({ min: 1, max: 60_000 }).map((timeoutMs) => new DeliveryTimeout({ timeoutMs }))],
  ConnectionFailed: ["retryable", fc.constantFrom("ECONNREFUSED", "ECONNRESET", "EPIPE").map((code) => new ConnectionFailed({ code, detail: "x" }))],
  DnsFailed: ["retryable", fc.constantFrom("ENOTFOUND", "EAI_AGAIN").map((code) => new DnsFailed({ hostname: "h", code }))],
  WorkerDefect: ["retryable", fc.constant(new WorkerDefect({ detail: "bug" }))],
  Gone: ["permanent", fc.constant(new Gone({ status: 410 }))],
  RejectedStatus: ["permanent", fc.oneof(fc.integer({ min: 100, max: 199 }), fc.integer({ min: 300, max: 499 }))
    .filter((s) => s !== 408 && s !== 429 && s !== 410).map((status) => new RejectedStatus({ status }))],
  DestinationBlocked: ["permanent", fc.constantFrom("private", "loopback", "cloud metadata").map((range) =>
    new DestinationBlocked({ hostname: "h", address: "10.0.0.1", range }))],
  InvalidUrl: ["permanent", fc.constant(new InvalidUrl({ reason: "x" }))],
  SecretUndecryptable: ["permanent", fc.constant(new SecretUndecryptable({ reason: "x" }))],
  EndpointDisabled: ["permanent", fc.constant(new EndpointDisabled({ reason: "x" }))],
  AttemptsExhausted: ["permanent", fc.integer({ min: 1, max: 1000 }).map((attempts) => new AttemptsExhausted({ attempts }))]
}
const outcomesThat = (expected: Expected) =>
  Object.values(outcomes).filter(([kind]) => kind === expected).map(([, arbitrary]) => arbitrary as fc.Arbitrary<AttemptOutcome>)
const permanentTags = Object.entries(outcomes).filter(([, [kind]]) => kind === "permanent").map(([tag]) => tag)

const permanentOutcomes = fc.oneof(
  ...outcomesThat("permanent"),
  // Statuses as the HTTP client classifies them, too.
  fc.integer({ min: 300, max: 499 }).filter((s) => s !== 408 && s !== 429).map((s) => classifyStatus(s, () => Option.none()))
)
const retryableOutcomes = fc.oneof(
  ...outcomesThat("retryable"),
  fc.integer({ min: 500, max: 599 }).map((s) => classifyStatus(s, () => Option.none())),
  fc.constantFrom(408, 429).map((s) => classifyStatus(s, () => Option.none()))
)
/** An attempt number and the row's max_attempts, in any relation (including attempts past the budget). */
const attemptAndMax = fc.tuple(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 1, max: 1000 }))

describe("retry policy", () => {
  it.effect.prop("each delay is the exponential step, jittered within ±20 %, never above RETRY_MAX_DELAY", [settings, maxAttempts, fc.integer({ min: 1, max: 29 })], ([s, max, attempt]) =>
    Effect.gen(function*() {
      const delay = yield* delayAfterAttempt(s, attempt, max)
      if (attempt >= max) {
        expect(Option.isNone(delay)).toBe(true)
        return
      }
      const ms = Duration.toMillis(Option.getOrThrow(delay))
      const nominal = s.retryBaseDelayMs * Math.pow(s.retryBackoffFactor, attempt - 1)
      expect(ms).toBeLessThanOrEqual(s.retryMaxDelayMs + 1e-6)
      expect(ms).toBeLessThanOrEqual(nominal * JITTER_MAX + 1e-6)
      expect(ms).toBeGreaterThanOrEqual(Math.min(nominal * JITTER_MIN, s.retryMaxDelayMs) - 1e-6)
    }))

  it.effect("the defaults give 30 s, 2 min, 8 min, 32 min (±20 %) and then dead-letter after 5 attempts", () =>
    Effect.gen(function*() {
      const defaults = { retryBaseDelayMs: 30_000, retryBackoffFactor: 4, retryMaxDelayMs: 21_600_000 }
      const nominal = [30_000, 120_000, 480_000, 1_920_000]
      for (const [index, expected] of nominal.entries()) {
        const ms = Duration.toMillis(Option.getOrThrow(yield* delayAfterAttempt(defaults, index + 1, 5)))
        expect(ms).toBeGreaterThanOrEqual(expected * 0.8)
        expect(ms).toBeLessThanOrEqual(expected * 1.2)
      }
      expect(Option.isNone(yield* delayAfterAttempt(defaults, 5, 5))).toBe(true)
    }))

  it.effect.prop("a row is never attempted more than max_attempts times", [settings, maxAttempts, retryableOutcomes], ([s, max, outcome]) =>
    Effect.gen(function*() {
      let attempts = 0
      while (true) {
        attempts++
        const decision = yield* decide(outcome, attempts, max, s)
        if (decision._tag !== "Retry") break
        expect(attempts).toBeLessThan(max)
      }
      expect(attempts).toBe(max)
    }))

  it("every outcome tag is classified as SPEC.md says", () => {
    expect(permanentTags.sort()).toEqual([
      "AttemptsExhausted", "DestinationBlocked", "EndpointDisabled", "Gone", "InvalidUrl", "RejectedStatus", "SecretUndecryptable"
    ])
    for (const [kind, arbitrary] of Object.values(outcomes)) {
      for (const outcome of fc.sample(arbitrary as fc.Arbitrary<AttemptOutcome>, 20)) {
        expect(isRetryable(outcome), outcome._tag).toBe(kind === "retryable")
      }
    }
  })

  it.effect.prop("permanent outcomes are dead-lettered, never retried, whatever the attempt and max_attempts", [settings, attemptAndMax, permanentOutcomes], ([s, [attempt, max], outcome]) =>
    Effect.gen(function*() {
      expect(isRetryable(outcome)).toBe(false)
      expect(yield* decide(outcome, attempt, max, s)).toEqual({ _tag: "DeadLetter" })
    }))

  it.effect.prop("2xx is delivered whatever the attempt and max_attempts", [settings, attemptAndMax, fc.integer({ min: 200, max: 299 })], ([s, [attempt, max], status]) =>
    Effect.gen(function*() {
      expect(yield* decide(classifyStatus(status, () => Option.none()), attempt, max, s)).toEqual({ _tag: "Deliver" })
    }))

  it.prop("Retry-After is honoured: never earlier than asked, never later than RETRY_MAX_DELAY", [settings, fc.integer({ min: 0, max: 10_000_000 }), fc.integer({ min: 0, max: 100_000_000 })], ([s, scheduledMs, askedMs]) => {
    const delay = Duration.toMillis(honourRetryAfter(s, Duration.millis(Math.min(scheduledMs, s.retryMaxDelayMs)), Option.some(Duration.millis(askedMs))))
    expect(delay).toBeLessThanOrEqual(s.retryMaxDelayMs)
    expect(delay).toBeGreaterThanOrEqual(Math.min(askedMs, s.retryMaxDelayMs))
  })

  it.effect("a 429 with Retry-After 120 waits 120 s even when the schedule says 50 ms", () =>
    Effect.gen(function*() {
      const s = { retryBaseDelayMs: 50, retryBackoffFactor: 2, retryMaxDelayMs: 3_600_000 }
      const decision = yield* decide(classifyStatus(429, () => parseRetryAfter("120", 0)), 1, 5, s)
      expect(decision).toEqual({ _tag: "Retry", delay: Duration.millis(120_000) })
      const capped = yield* decide(classifyStatus(503, () => parseRetryAfter("999999", 0)), 1, 5, s)
      expect(capped).toEqual({ _tag: "Retry", delay: Duration.millis(3_600_000) })
    }))

  it("parses Retry-After as seconds or an HTTP date", () => {
    expect(parseRetryAfter("30", 0)).toEqual(Option.some(Duration.seconds(30)))
    expect(parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", Date.parse("Wed, 21 Oct 2015 07:27:00 GMT"))).toEqual(Option.some(Duration.millis(60_000)))
    expect(parseRetryAfter("soon", 0)).toEqual(Option.none())
    expect(parseRetryAfter(undefined, 0)).toEqual(Option.none())
  })
})

describe("classification of a response (SPEC.md: Outcome of an attempt)", () => {
  it.prop("2xx delivered; 5xx, 408, 429 retryable; 410 gone; every other status permanent", [fc.integer({ min: 100, max: 599 })], ([status]) => {
    const outcome = classifyStatus(status, () => Option.none())
    if (status >= 200 && status < 300) expect(outcome._tag).toBe("Delivered")
    else if (status === 410) expect(outcome._tag).toBe("Gone")
    else if (status >= 500 || status === 408 || status === 429) expect(outcome._tag).toBe("RetryableStatus")
    else expect(outcome._tag).toBe("RejectedStatus")
    expect(isRetryable(outcome)).toBe(status >= 500 || status === 408 || status === 429)
  })

  it("keeps Retry-After only for 429 and 503", () => {
    const asked = () => Option.some(Duration.seconds(5))
    expect(classifyStatus(429, asked)).toMatchObject({ retryAfter: Option.some(Duration.seconds(5)) })
    expect(classifyStatus(503, asked)).toMatchObject({ retryAfter: Option.some(Duration.seconds(5)) })
    expect(classifyStatus(500, asked)).toMatchObject({ retryAfter: Option.none() })
  })
})
