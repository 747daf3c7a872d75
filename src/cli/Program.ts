import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Cause from "effect/Cause"
import type * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
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
          if (Option.exists(Cause.failureOption(cause), ValidationError.isValidationError)) {
            const first = usage.join("\n").replace(ANSI, "").split("\n").map((line) => line.trim()).find((line) => line !== "")
            io.stderr(`webhook-worker: ${first ?? "invalid usage"} (see --help)\n`)
          } else {
            io.stderr(`webhook-worker: ${describeFailure(cause)}\n`)
            if (io.env.LOG_LEVEL?.toUpperCase() === "DEBUG") io.stderr(Cause.pretty(cause) + "\n")
          }
          return code
        })
      ),
      Effect.provide(NodeContext.layer)
    )
  })
