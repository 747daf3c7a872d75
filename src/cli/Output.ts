import { Data } from "effect"
import { say } from "./CliEnvironment.js"

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
