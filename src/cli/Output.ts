import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { type CliIO, say } from "./CliEnvironment.js"

/** Bad command-line input; `flag` names the culprit. Exit status 2. */
export class UsageError extends Data.TaggedError("UsageError")<{
  readonly flag: string
  readonly reason: string
}> {
  override get message() {
    return `${this.flag}: ${this.reason}`
  }
}

/** A runtime failure with a message fit for an operator. Exit status 1. */
export class CommandFailed extends Data.TaggedError("CommandFailed")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

const cell = (value: unknown): string => {
  if (value === null || value === undefined) return ""
  if (value instanceof Date) return value.toISOString()
  if (typeof value === "object") return JSON.stringify(value)
  return String(value)
}

/** A plain aligned table, for terminals and `grep` alike. */
export const formatTable = (columns: ReadonlyArray<string>, rows: ReadonlyArray<Record<string, unknown>>): string => {
  const cells = rows.map((row) => columns.map((column) => cell(row[column]).replace(/\s+/g, " ")))
  const widths = columns.map((column, index) => Math.max(column.length, ...cells.map((row) => row[index]!.length)))
  const line = (values: ReadonlyArray<string>) => values.map((value, index) => value.padEnd(widths[index]!)).join("  ").trimEnd()
  return [line(columns), line(widths.map((width) => "-".repeat(width))), ...cells.map(line)].join("\n")
}

export const printTable = (columns: ReadonlyArray<string>, rows: ReadonlyArray<Record<string, unknown>>) =>
  say(formatTable(columns, rows))

/** One JSON document on stdout. */
export const printJson = (value: unknown) =>
  say(JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v), 2))

// == progress

/** One line of a progress bar, e.g. `rotate-key [#######-------] 120/480 25%`. */
export const renderProgress = (label: string, done: number, total: number, width = 30): string => {
  const ratio = total <= 0 ? 1 : Math.min(1, done / total)
  const filled = Math.round(ratio * width)
  return `${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total} ${Math.floor(ratio * 100)}%`
}

/**
 * A progress bar redrawn in place on stderr when stderr is a terminal (at most 10 times a second);
 * nothing at all otherwise, so logs and pipes get only the command's one summary line.
 */
export const makeProgress = (label: string, io: CliIO) => {
  const interactive = io.stderrIsTTY
  let lastDrawn = 0
  let state = { done: 0, total: 0 }
  const draw = () => io.stderr(`\r${renderProgress(label, state.done, state.total)}\u001b[K`)
  return {
    interactive,
    update: (done: number, total: number) =>
      Effect.sync(() => {
        state = { done, total }
        if (!interactive) return
        const now = Date.now()
        if (now - lastDrawn < 100) return
        lastDrawn = now
        draw()
      }),
    /** Draws the final state and ends the line (also after a failure, so the prompt is clean). */
    finish: Effect.sync(() => {
      if (!interactive || lastDrawn === 0) return
      draw()
      io.stderr("\n")
    })
  }
}
