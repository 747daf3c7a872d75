import * as Effect from "effect/Effect"
import { readFile } from "node:fs/promises"
import { ConfigInvalid } from "./AppConfig.js"

/**
 * Parses an env file as systemd's EnvironmentFile= and dotenv read it: `KEY=value` lines,
 * optional `export `, `#` comments, single or double quotes (double quotes honour \n, \" and \\).
 * More forgiving than systemd in two ways, dotenv's: `export ` is allowed, and an unquoted value
 * ends at ` #` (systemd keeps the rest as part of the value).
 */
export const parseEnvFile = (text: string, source: string): Map<string, string> | ConfigInvalid => {
  const vars = new Map<string, string>()
  const lines = text.split(/\r?\n/)
  for (const [index, line] of lines.entries()) {
    const trimmed = line.trim()
    if (trimmed === "" || trimmed.startsWith("#") || trimmed.startsWith(";")) continue
    const match = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(trimmed)
    if (match === null) {
      return new ConfigInvalid({ variable: `${source}:${index + 1}`, reason: "expected KEY=value" })
    }
    const [, key, rawValue] = match as unknown as [string, string, string]
    vars.set(key, unquote(rawValue))
  }
  return vars
}

const unquote = (raw: string): string => {
  if (raw.length >= 2 && raw.startsWith("\"") && raw.endsWith("\"")) {
    return raw.slice(1, -1).replace(/\\(["\\n])/g, (_, ch: string) => (ch === "n" ? "\n" : ch))
  }
  if (raw.length >= 2 && raw.startsWith("'") && raw.endsWith("'")) return raw.slice(1, -1)
  // An unquoted value ends at an inline comment.
  const comment = raw.search(/\s#/)
  return (comment === -1 ? raw : raw.slice(0, comment)).trim()
}

/** Reads and parses an env file; a missing or malformed file is a configuration error naming it. */
export const readEnvFile = (path: string) =>
  Effect.tryPromise({
    try: () => readFile(path, "utf8"),
    catch: (cause) =>
      new ConfigInvalid({
        variable: "--env-file",
        reason: `cannot read ${path}: ${cause instanceof Error && "code" in cause ? String(cause.code) : String(cause)}`
      })
  }).pipe(
    Effect.flatMap((text) => {
      const parsed = parseEnvFile(text, path)
      return parsed instanceof ConfigInvalid ? Effect.fail(parsed) : Effect.succeed(parsed)
    })
  )
