import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import { runProgram } from "./cli/Program.js"

// The binary: the CLI on this process's argv, environment and streams; its status is the exit code.
NodeRuntime.runMain(
  Effect.map(runProgram(process.argv), (code) => {
    process.exitCode = code
  }),
  { disableErrorReporting: true, disablePrettyLogger: true }
)
