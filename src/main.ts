import { ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, type Console, Effect, Option } from "effect"
import { cli } from "./cli/Cli.js"
import { causeMessage } from "./observability/Log.js"

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

/** @effect/cli prints usage errors as paragraphs; keep them and show only the first line. */
const withFirstLineOfUsageErrors = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.consoleWith((console) => {
    const usage: Array<string> = []
    const quiet: Console.Console = { ...console, error: (...args) => Effect.sync(() => usage.push(args.join(" "))) }
    return effect.pipe(
      Effect.withConsole(quiet),
      Effect.tapErrorCause((cause) =>
        Option.exists(Cause.failureOption(cause), ValidationError.isValidationError)
          ? Effect.sync(() => {
            // eslint-disable-next-line no-control-regex
            const text = usage.join("\n").replace(/\u001b\[[0-9;]*m/g, "")
            const first = text.split("\n").map((line) => line.trim()).find((line) => line !== "") ?? "invalid usage"
            process.stderr.write(`webhook-worker: ${first} (see --help)\n`)
          })
          : Effect.void
      )
    )
  })

const program = withFirstLineOfUsageErrors(cli(process.argv)).pipe(
  Effect.catchAllCause((cause) =>
    Effect.sync(() => {
      if (Cause.isInterruptedOnly(cause)) return
      const code = exitCodeOf(cause)
      // @effect/cli already printed its own usage error.
      if (!(code === 2 && Option.exists(Cause.failureOption(cause), ValidationError.isValidationError))) {
        process.stderr.write(`webhook-worker: ${describeFailure(cause)}\n`)
        if (process.env.LOG_LEVEL?.toUpperCase() === "DEBUG") process.stderr.write(Cause.pretty(cause) + "\n")
      }
      process.exitCode = code
    })
  ),
  Effect.provide(NodeContext.layer)
)

NodeRuntime.runMain(program, { disableErrorReporting: true, disablePrettyLogger: true })
