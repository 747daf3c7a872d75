import * as Effect from "effect/Effect"
import * as Equal from "effect/Equal"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import { type AppSettings, type ConfigInvalid, restartOnlySettings, Settings } from "./AppConfig.js"

const comparable = (value: unknown): unknown => {
  if (Redacted.isRedacted(value)) return `redacted:${String(Redacted.value(value))}`
  if (Option.isOption(value)) return Option.match(value, { onNone: () => null, onSome: comparable })
  if (Array.isArray(value)) return value.map(comparable)
  return value
}

/** The names of settings whose values differ. */
export const changedSettings = (before: AppSettings, after: AppSettings): ReadonlyArray<keyof AppSettings> =>
  (Object.keys(after) as Array<keyof AppSettings>).filter((key) =>
    !Equal.equals(JSON.stringify(comparable(before[key])), JSON.stringify(comparable(after[key])))
  )

/** SIGHUPs that arrived before the live settings were listening. */
export interface HeldHangups {
  /** Whether one arrived since the hold began (and forgets it, so it is replayed once). */
  readonly take: () => boolean
}

/**
 * Holds SIGHUPs from process start until the live settings listen. Node's default action for an
 * unhandled SIGHUP ends the process, and start-up can take a while (a slow database connection,
 * another instance's migration lock): a `systemctl reload` then must reload, not kill the worker.
 */
export const holdHangups: Effect.Effect<HeldHangups, never, Scope.Scope> = Effect.acquireRelease(
  Effect.sync(() => {
    let held = false
    const listener = () => {
      held = true
    }
    process.on("SIGHUP", listener)
    const take = () => {
      const was = held
      held = false
      return was
    }
    return { listener, take }
  }),
  ({ listener }) => Effect.sync(() => process.off("SIGHUP", listener))
).pipe(Effect.map(({ take }) => ({ take })))

/**
 * Settings that SIGHUP re-reads: the worker reads them at each step, so batch size, poll
 * interval, concurrency, timeouts, retry policy, log level and the encryption keys change
 * without dropping in-flight work. A bad file keeps the running settings and logs why.
 */
export const layer = (
  initial: AppSettings,
  reload: Effect.Effect<AppSettings, ConfigInvalid>,
  onChange: (next: AppSettings) => void,
  held?: HeldHangups
) =>
  Layer.scoped(
    Settings,
    Effect.gen(function*() {
      const ref = yield* Ref.make(initial)
      const runtime = yield* Effect.runtime<never>()
      const reloadOnce = Effect.gen(function*() {
        const next = yield* reload
        const before = yield* Ref.get(ref)
        const changed = changedSettings(before, next)
        const needRestart = changed.filter((key) => restartOnlySettings.includes(key))
        // Restart-only settings keep their running values so the process stays consistent.
        const applied: AppSettings = { ...next, ...Object.fromEntries(needRestart.map((key) => [key, before[key]])) }
        yield* Ref.set(ref, applied)
        onChange(applied)
        yield* Effect.logInfo("Configuration reloaded").pipe(
          Effect.annotateLogs({ changed: changed.filter((key) => !needRestart.includes(key)).join(",") })
        )
        if (needRestart.length > 0) {
          yield* Effect.logWarning("Some changed settings apply only after a restart").pipe(
            Effect.annotateLogs({ restart_needed_for: needRestart.join(",") })
          )
        }
      }).pipe(
        Effect.catchTag("ConfigInvalid", (error) =>
          Effect.logError("Reload failed; keeping the running configuration").pipe(
            Effect.annotateLogs({ error: error.message })
          ))
      )
      const onHangup = () => {
        Runtime.runFork(runtime)(reloadOnce)
      }
      process.on("SIGHUP", onHangup)
      // The file may have changed after `initial` was read: a reload asked for during start-up happens now.
      if (held?.take()) onHangup()
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("SIGHUP", onHangup)))
      return { get: Ref.get(ref) }
    })
  )
