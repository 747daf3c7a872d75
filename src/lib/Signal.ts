import * as Effect from "effect/Effect"

/**
 * A wake-up flag that callbacks raise and one fiber waits on, with a timeout: what
 * `Queue.sliding(1)` with `Queue.take` under `Effect.timeoutOption` does, without the two fibers
 * that the timeout races. The claim loop waits once per claim; those waits and the retries of
 * Retry.ts were about a tenth of the worker's CPU at full load (interleaved burn-downs before
 * and after). A raise with nobody waiting is kept for the next wait; raises do not add up.
 * The timeout is a plain timer, not Effect's Clock: TestClock does not move it.
 */
export class Signal {
  private raised = false
  private waiter: (() => void) | undefined = undefined

  raise(): void {
    const waiter = this.waiter
    if (waiter === undefined) {
      this.raised = true
      return
    }
    this.waiter = undefined
    waiter()
  }

  /** True when raised (before or during the wait), false when `timeoutMs` passed first. */
  wait(timeoutMs: number): Effect.Effect<boolean> {
    return Effect.async<boolean>((resume) => {
      if (this.raised) {
        this.raised = false
        resume(Effect.succeed(true))
        return
      }
      const timer = setTimeout(() => {
        this.waiter = undefined
        resume(Effect.succeed(false))
      }, timeoutMs)
      this.waiter = () => {
        clearTimeout(timer)
        resume(Effect.succeed(true))
      }
      return Effect.sync(() => {
        clearTimeout(timer)
        this.waiter = undefined
      })
    })
  }
}
