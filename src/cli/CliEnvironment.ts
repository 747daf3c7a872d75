import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { isJournalStream } from "../observability/Log.js"

/**
 * What a command sees of its process: environment variables and the two output streams. The
 * binary uses the real ones; tests run the same program in-process with their own (no process
 * start-up per command, and several commands at once with different environments).
 */
export interface CliIO {
  readonly env: NodeJS.ProcessEnv
  readonly stdout: (text: string) => void
  readonly stderr: (text: string) => void
  /** Progress bars are drawn only on a terminal. */
  readonly stderrIsTTY: boolean
  /** Under systemd, a failure's line is marked as an error for journald (`<3>`). */
  readonly stderrIsJournal: boolean
}

export class CliEnvironment extends Context.Reference<CliEnvironment>()("webhook-worker/CliEnvironment", {
  defaultValue: (): CliIO => ({
    env: process.env,
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    stderrIsTTY: process.stderr.isTTY === true,
    stderrIsJournal: isJournalStream(2)
  })
}) {}

/** A line on stdout. */
export const say = (line: string) => Effect.map(CliEnvironment, (io) => io.stdout(line + "\n"))

/** A line on stderr (notes, warnings; not Console.error, whose channel collects usage errors). */
export const note = (line: string) => Effect.map(CliEnvironment, (io) => io.stderr(line + "\n"))
