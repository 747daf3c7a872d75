import { Effect } from "effect"
import * as Cli from "../utils/Cli.js"
import { existsSync } from "node:fs"
import { mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"

/** The built binary: `npm test` builds dist/ first (run `npm run build` before running this folder alone). */
export const bin = join(import.meta.dirname, "..", "..", "bin", "webhook-worker.js")

export const assertBuilt = () => {
  if (!existsSync(join(import.meta.dirname, "..", "..", "dist", "db", "EmbeddedThread.js"))) {
    throw new Error("dist/ has no embedded database: run `npm run build` first")
  }
}

/**
 * A minimal environment for a CLI process: no DATABASE_URL and no encryption key, whatever the
 * test runner's environment holds, so the process takes the embedded path as a newcomer's would.
 */
export const embeddedEnv = (extra: Record<string, string> = {}): Record<string, string> => {
  const env: Record<string, string> = { METRICS_ENABLED: "false", LOG_FORMAT: "json" }
  for (const key of ["PATH", "HOME", "TMPDIR"]) {
    const value = process.env[key]
    if (value !== undefined) env[key] = value
  }
  return { ...env, ...extra }
}

/** A temporary directory for the scope's lifetime. */
export const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.promise(() => mkdtemp(join(tmpdir(), prefix))),
    (dir) => Effect.promise(() => rm(dir, { recursive: true, force: true }))
  )

export type { CliResult, RunningCli as Running } from "../utils/Cli.js"

/** Runs the built CLI in `cwd` to completion. */
export const runCli = (cwd: string, args: ReadonlyArray<string>, env: Record<string, string> = embeddedEnv()) =>
  Cli.runCli(args, env, { cwd })

/** A long-running CLI process (worker, receiver) in `cwd`, its stdout collected line by line. */
export const spawnCli = (cwd: string, args: ReadonlyArray<string>, env: Record<string, string> = embeddedEnv()) =>
  Cli.spawnCli(args, env, { cwd })

/** Parses the JSON log lines (or JSON output lines) that parse; others are skipped. */
export const jsonLines = (lines: ReadonlyArray<string>): Array<Record<string, unknown>> =>
  lines.flatMap((line) => {
    try {
      const value: unknown = JSON.parse(line)
      return typeof value === "object" && value !== null ? [value as Record<string, unknown>] : []
    } catch {
      return []
    }
  })
