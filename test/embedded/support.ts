import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
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

export interface CliResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs the CLI in `cwd` to completion. */
export const runCli = (cwd: string, args: ReadonlyArray<string>, env: Record<string, string> = embeddedEnv()) =>
  Effect.async<CliResult>((resume) => {
    const child = spawn(process.execPath, [bin, ...args], { cwd, env, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A long-running CLI process (worker, receiver) whose stdout is collected line by line. */
export interface Running {
  readonly process: ChildProcess
  readonly lines: Array<string>
  readonly stderr: () => string
  readonly signal: (signal: NodeJS.Signals) => Effect.Effect<void>
  readonly exited: Effect.Effect<number | null>
  readonly waitForLine: (pattern: RegExp, timeoutMs?: number) => Effect.Effect<string>
}

export const spawnCli = (cwd: string, args: ReadonlyArray<string>, env: Record<string, string> = embeddedEnv()) =>
  Effect.acquireRelease(
    Effect.sync((): Running => {
      const child = spawn(process.execPath, [bin, ...args], { cwd, env, stdio: ["ignore", "pipe", "pipe"] })
      const lines: Array<string> = []
      let stderr = ""
      let buffered = ""
      child.stdout!.on("data", (chunk: Buffer) => {
        buffered += chunk.toString()
        const parts = buffered.split("\n")
        buffered = parts.pop()!
        lines.push(...parts)
      })
      child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
      const exit = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))
      return {
        process: child,
        lines,
        stderr: () => stderr,
        signal: (signal) => Effect.sync(() => void child.kill(signal)),
        exited: Effect.promise(() => exit),
        waitForLine: (pattern, timeoutMs = 30_000) =>
          Effect.gen(function*() {
            const deadline = Date.now() + timeoutMs
            while (true) {
              const found = lines.find((line) => pattern.test(line))
              if (found !== undefined) return found
              if (Date.now() > deadline || child.exitCode !== null) {
                return yield* Effect.die(
                  new Error(`no line matching ${pattern} (exit ${child.exitCode}); stdout:\n${lines.join("\n")}\nstderr:\n${stderr}`)
                )
              }
              yield* Effect.sleep("50 millis")
            }
          })
      }
    }),
    (running) =>
      Effect.sync(() => {
        if (running.process.exitCode === null && running.process.signalCode === null) running.process.kill("SIGKILL")
      })
  )

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
