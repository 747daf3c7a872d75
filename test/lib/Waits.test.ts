import { it } from "@effect/vitest"
import { Clock, Duration, Effect, Fiber, TestClock } from "effect"
import { describe, expect } from "vitest"
import { retryUntilDone } from "../../src/lib/Retry.js"
import { Signal } from "../../src/lib/Signal.js"

class Down {
  readonly _tag = "Down"
}

describe("retryUntilDone (claims and result writes while the database is away)", () => {
  it.effect("tries again after 0.1 s, doubling each time up to 5 s, reporting every failure", () =>
    Effect.gen(function*() {
      const failures = 9
      const triedAt: Array<number> = []
      const reported: Array<Down> = []
      const statement = Effect.gen(function*() {
        triedAt.push(yield* Clock.currentTimeMillis)
        return triedAt.length <= failures ? yield* Effect.fail(new Down()) : "done"
      })
      const fiber = yield* Effect.fork(retryUntilDone(statement, (error) => Effect.sync(() => reported.push(error))))
      yield* TestClock.adjust(Duration.minutes(1))
      expect(yield* Fiber.join(fiber)).toBe("done")
      expect(reported).toHaveLength(failures)
      expect(triedAt.slice(1).map((at, i) => at - triedAt[i]!)).toEqual([100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000])
    }))

  it.effect("inside an uninterruptible region a try runs to its end, but the waits between tries give way to an interrupt", () =>
    Effect.gen(function*() {
      let tries = 0
      let finished = 0
      // Each try takes 1 s and fails: the database away.
      const statement = Effect.gen(function*() {
        tries++
        yield* Effect.sleep(Duration.seconds(1))
        finished++
        return yield* Effect.fail(new Down())
      })
      const fiber = yield* Effect.fork(Effect.uninterruptible(retryUntilDone(statement, () => Effect.void)))
      yield* TestClock.adjust(Duration.millis(500))
      // Interrupted in the middle of the first try: the try finishes, then the wait gives way.
      const interrupted = yield* Effect.fork(Fiber.interrupt(fiber))
      yield* TestClock.adjust(Duration.seconds(1))
      const exit = yield* Fiber.join(interrupted)
      expect(exit._tag).toBe("Failure")
      expect([tries, finished]).toEqual([1, 1])
    }))

  it.effect("a statement that succeeds runs once, at once", () =>
    Effect.gen(function*() {
      let tries = 0
      const result = yield* retryUntilDone(Effect.sync(() => ++tries), () => Effect.die("no failure expected"))
      expect([result, tries]).toEqual([1, 1])
    }))
})

describe("Signal (the claim loop's wake-ups)", () => {
  it.live("a raise during the wait ends it at once; none lets it time out", () =>
    Effect.gen(function*() {
      const signal = new Signal()
      setTimeout(() => signal.raise(), 20)
      const started = performance.now()
      expect(yield* signal.wait(10_000)).toBe(true)
      expect(performance.now() - started).toBeLessThan(5_000)
      const quiet = performance.now()
      expect(yield* signal.wait(30)).toBe(false)
      expect(performance.now() - quiet).toBeGreaterThanOrEqual(25)
    }))

  it.live("a raise with nobody waiting is kept for the next wait, and raises do not add up", () =>
    Effect.gen(function*() {
      const signal = new Signal()
      signal.raise()
      signal.raise()
      expect(yield* signal.wait(10_000)).toBe(true)
      expect(yield* signal.wait(20)).toBe(false)
    }))

  it.live("an interrupted wait leaves no waiter behind: the next raise is kept", () =>
    Effect.gen(function*() {
      const signal = new Signal()
      const waiting = yield* Effect.fork(signal.wait(10_000))
      yield* Effect.sleep(Duration.millis(10))
      yield* Fiber.interrupt(waiting)
      signal.raise()
      expect(yield* signal.wait(10_000).pipe(Effect.timeoutOption(Duration.seconds(5)))).toEqual(expect.objectContaining({ _tag: "Some", value: true }))
    }))
})
