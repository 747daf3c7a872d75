import { Effect } from "effect"
import { CliEnvironment } from "../../src/cli/CliEnvironment.js"
import { runProgram } from "../../src/cli/Program.js"
import { type ChildProcess, spawn } from "node:child_process"
import { join } from "node:path"

const bin = join(import.meta.dirname, "..", "..", "bin", "webhook-worker.js")

export interface CliResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const baseEnv = (env: Record<string, string | undefined>) => {
  const merged: Record<string, string> = {}
  for (const [key, value] of Object.entries({ PATH: process.env.PATH, HOME: process.env.HOME, ...env })) {
    if (value !== undefined) merged[key] = value
  }
  return merged
}

/**
 * Runs the CLI program in this process, with its own environment and captured output: the same
 * parsing, commands, messages and exit status as the binary, without a process start-up per
 * command. `runCli` (below) runs the real binary where the process itself is under test.
 */
export const runCliInProcess = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}) =>
  Effect.suspend(() => {
    let stdout = ""
    let stderr = ""
    return runProgram(["node", "webhook-worker", ...args]).pipe(
      Effect.provideService(CliEnvironment, {
        env: baseEnv(env),
        stdout: (text) => void (stdout += text),
        stderr: (text) => void (stderr += text),
        stderrIsTTY: false,
        stderrIsJournal: false
      }),
      Effect.map((code): CliResult => ({ code, stdout, stderr }))
    )
  })

export interface SpawnOptions {
  /** Working directory of the process (the embedded database lives under it). */
  readonly cwd?: string
}

/** Runs the built CLI (`npm test` builds dist/ first) to completion. */
export const runCli = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}, options: SpawnOptions = {}) =>
  Effect.async<CliResult>((resume) => {
    const child = spawn(process.execPath, [bin, ...args], { cwd: options.cwd, env: baseEnv(env), stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A long-running CLI process (the worker), its output collected line by line. */
export interface RunningCli {
  readonly process: ChildProcess
  readonly lines: Array<string>
  readonly stderr: Array<string>
  readonly signal: (signal: NodeJS.Signals) => Effect.Effect<void>
  readonly exited: Effect.Effect<number | null>
  readonly waitForLine: (pattern: RegExp, timeoutMs?: number) => Effect.Effect<string>
}

export const spawnCli = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}, options: SpawnOptions = {}) =>
  Effect.acquireRelease(
    Effect.sync((): RunningCli => {
      const child = spawn(process.execPath, [bin, ...args], { cwd: options.cwd, env: baseEnv(env), stdio: ["ignore", "pipe", "pipe"] })
      const lines: Array<string> = []
      const stderr: Array<string> = []
      let buffered = ""
      child.stdout!.on("data", (chunk: Buffer) => {
        buffered += chunk.toString()
        const parts = buffered.split("\n")
        buffered = parts.pop()!
        lines.push(...parts)
      })
      child.stderr!.on("data", (chunk: Buffer) => stderr.push(chunk.toString()))
      const exit = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))
      return {
        process: child,
        lines,
        stderr,
        signal: (signal) => Effect.sync(() => void child.kill(signal)),
        exited: Effect.promise(() => exit),
        waitForLine: (pattern, timeoutMs = 30_000) =>
          Effect.gen(function*() {
            const deadline = Date.now() + timeoutMs
            while (true) {
              const found = lines.find((line) => pattern.test(line))
              if (found !== undefined) return found
              if (Date.now() > deadline || child.exitCode !== null) {
                return yield* Effect.die(new Error(`no line matching ${pattern} (exit ${child.exitCode}); stdout:\n${lines.join("\n")}\nstderr:\n${stderr.join("")}`))
              }
              yield* Effect.sleep("20 millis")
            }
          })
      }
    }),
    (running) => Effect.sync(() => {
      if (running.process.exitCode === null) running.process.kill("SIGKILL")
    })
  )
