import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Cause from "effect/Cause"
import type * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { readFileSync } from "node:fs"
import { parseEnvFile } from "../config/EnvFile.js"
import { causeMessage } from "../observability/Log.js"
import { cli } from "./Cli.js"
import { CliEnvironment } from "./CliEnvironment.js"

/**
 * Exit status (SPEC.md): 0 success; 2 bad usage or configuration, with one line on stderr naming
 * the flag or variable; 1 a runtime failure, with a clear message (the full cause at LOG_LEVEL=DEBUG).
 */
const exitCodeOf = (cause: Cause.Cause<unknown>): number => {
  const failure = Cause.failureOption(cause)
  if (Option.isNone(failure)) return 1
  const error = failure.value
  if (ValidationError.isValidationError(error)) return 2
  const tag = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : ""
  return tag === "ConfigInvalid" || tag === "UsageError" ? 2 : 1
}

const describeFailure = (cause: Cause.Cause<unknown>): string => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value as { _tag?: string; message?: string; cause?: unknown }
    if (error._tag === "SqlError") {
      const inner = error.cause instanceof Error ? error.cause.message : ""
      return `database error: ${error.message}${inner ? `: ${inner}` : ""}`
    }
  }
  return causeMessage(cause)
}

/** The cause with stacks, and the errors it wraps (a driver's error inside an SqlError, say). */
const fullCause = (cause: Cause.Cause<unknown>): string => {
  const parts = [Cause.pretty(cause)]
  let inner: unknown = Option.getOrUndefined(Cause.failureOption(cause))
  for (let depth = 0; depth < 5 && typeof inner === "object" && inner !== null && "cause" in inner; depth++) {
    inner = inner.cause
    if (inner === undefined || inner === null) break
    parts.push(`Caused by: ${inner instanceof Error ? inner.stack ?? inner.message : String(inner)}`)
  }
  return parts.join("\n")
}

/**
 * The LOG_LEVEL a failed command ran with: the environment's, unless an `--env-file` sets it
 * (a later file wins, as for every setting), so the guide's `webhook-worker-admin` runs, whose
 * files hold the settings, can ask for the full cause too.
 */
const logLevelOf = (argv: ReadonlyArray<string>, env: Readonly<Record<string, string | undefined>>): string | undefined => {
  let level = env.LOG_LEVEL
  argv.forEach((arg, index) => {
    const path = arg === "--env-file" ? argv[index + 1] : undefined
    if (path === undefined) return
    try {
      const vars = parseEnvFile(readFileSync(path, "utf8"), path)
      if (vars instanceof Map && vars.has("LOG_LEVEL")) level = vars.get("LOG_LEVEL")
    } catch {
      // An unreadable file was already reported as the command's own error.
    }
  })
  return level
}

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*m/g

/**
 * Runs the CLI on `argv` (as process.argv: node, script, args…) and returns the exit status.
 * Output goes to the CliEnvironment's streams: @effect/cli's console output too (help text to
 * stdout; its usage errors, which it prints as paragraphs, are cut to their first line).
 */
export const runProgram = (argv: ReadonlyArray<string>): Effect.Effect<number> =>
  Effect.gen(function*() {
    const io = yield* CliEnvironment
    const usage: Array<string> = []
    return yield* Effect.consoleWith((console) => {
      const routed: Console.Console = {
        ...console,
        log: (...args) => Effect.sync(() => io.stdout(args.join(" ") + "\n")),
        error: (...args) => Effect.sync(() => usage.push(args.join(" ")))
      }
      return cli(argv).pipe(Effect.withConsole(routed))
    }).pipe(
      Effect.as(0),
      Effect.catchAllCause((cause) =>
        Effect.sync(() => {
          if (Cause.isInterruptedOnly(cause)) return 0
          const code = exitCodeOf(cause)
          // journald stores the line as an error and strips the prefix (SyslogLevelPrefix=).
          const errorPrefix = io.stderrIsJournal ? "<3>" : ""
          if (Option.exists(Cause.failureOption(cause), ValidationError.isValidationError)) {
            const first = usage.join("\n").replace(ANSI, "").split("\n").map((line) => line.trim()).find((line) => line !== "")
            io.stderr(`${errorPrefix}webhook-worker: ${first ?? "invalid usage"} (see --help)\n`)
          } else {
            io.stderr(`${errorPrefix}webhook-worker: ${describeFailure(cause)}\n`)
            if (logLevelOf(argv, io.env)?.trim().toUpperCase() === "DEBUG") io.stderr(fullCause(cause) + "\n")
          }
          return code
        })
      ),
      Effect.provide(NodeContext.layer)
    )
  })
