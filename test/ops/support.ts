import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted, type Scope } from "effect"
import { spawn } from "node:child_process"
import { join } from "node:path"
import { expect } from "vitest"
import { Keyring } from "../../src/crypto/Keyring.js"
import { type CliResult, runCliInProcess } from "../utils/Cli.js"
import { TestDb } from "../utils/TestDatabase.js"
import { TEST_KEY } from "../utils/WorkerHarness.js"

/** The CLI, run in-process (the binary itself is covered by the process and terminal tests). */
export const runCli = runCliInProcess

export { TEST_KEY }

export const repoRoot = join(import.meta.dirname, "..", "..")

/** Runs `effect` against a fresh migrated database, with its URL for CLI processes. */
export const withDb = <A, E>(
  effect: (db: { readonly url: string; readonly name: string }) => Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>
) =>
  Effect.gen(function*() {
    const db = yield* TestDb
    return yield* effect(db).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(db.url), maxConnections: 6 })))
  }).pipe(Effect.provide(Layer.fresh(TestDb.Default)), Effect.scoped)

/** The environment a CLI process gets: the test database and the worker harness's key. */
export const cliEnv = (url: string, extra: Record<string, string | undefined> = {}) => ({
  DATABASE_URL: url,
  WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
  ...extra
})

/** Asserts a usage error: exit 2, one stderr line naming `flag`, nothing on stdout. */
export const expectUsageError = (result: CliResult, flag: string) => {
  expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(2)
  const lines = result.stderr.trim().split("\n")
  expect(lines, result.stderr).toHaveLength(1)
  expect(lines[0]).toContain(flag)
  expect(result.stdout).toBe("")
}

/** Asserts success and returns stdout. */
export const expectOk = (result: CliResult) => {
  expect(result.code, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`).toBe(0)
  return result.stdout
}

/** `key value` lines (what `endpoints add` and `rotate-secret` print) as a record. */
export const fields = (stdout: string): Record<string, string> =>
  Object.fromEntries(stdout.trim().split("\n").map((line) => {
    const [key, ...rest] = line.trim().split(/\s+/)
    return [key!, rest.join(" ")]
  }))

const keyBytes = (base64: string) => Buffer.from(base64, "base64")

/** A keyring as the worker builds it from WEBHOOK_SECRET_ENCRYPTION_KEY(_PREVIOUS). */
export const keyringOf = (current: string, previous: ReadonlyArray<string> = []) =>
  new Keyring(keyBytes(current), previous.map(keyBytes))

/** Stable test keys (base64 of 32 bytes). */
export const KEY_OLD = Buffer.alloc(32, 1).toString("base64")
export const KEY_NEW = Buffer.alloc(32, 2).toString("base64")
export const KEY_LOST = Buffer.alloc(32, 3).toString("base64")

/**
 * Runs the built CLI on a pseudo-terminal (util-linux `script`), so stderr is a TTY, as for an
 * operator at a shell. Returns everything the terminal showed.
 */
export const runCliOnTerminal = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.async<{ code: number | null; output: string }>((resume) => {
    const bin = join(repoRoot, "bin", "webhook-worker.js")
    const quote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`
    const command = [process.execPath, bin, ...args].map(quote).join(" ")
    const child = spawn("script", ["-qec", command, "/dev/null"], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", TERM: "dumb", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, output })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** A SQL count as a number. */
export const count = (query: string, params: ReadonlyArray<unknown> = []) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ n: number }>(`SELECT (${query})::int AS n`, params).pipe(Effect.map((rows) => rows[0]!.n))).pipe(Effect.orDie)
