import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted } from "effect"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { spawnSync } from "node:child_process"
import { dirname, join } from "node:path"
import Pg from "pg"
import { describe, expect } from "vitest"
import { runCli as runBinary, runCliInProcess as runCli } from "../utils/Cli.js"
import { TestDb } from "../utils/TestDatabase.js"
import { freePort } from "../utils/Ports.js"
import { adminUrl, databaseUrl } from "../utils/urls.js"
import { TEST_KEY } from "../utils/WorkerHarness.js"

const withDb = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | TestDb>) =>
  Effect.gen(function*() {
    const db = yield* TestDb
    return yield* effect.pipe(Effect.provide(PgClient.layer({ url: Redacted.make(db.url), maxConnections: 2 })))
  }).pipe(Effect.provide(Layer.fresh(TestDb.Default)), Effect.scoped)

const env = (url: string) => ({ DATABASE_URL: url, WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY })

const oneLine = (stderr: string) => {
  const lines = stderr.trim().split("\n")
  expect(lines).toHaveLength(1)
  return lines[0]!
}

describe("CLI", () => {
  it.live("every command has --help", () =>
    Effect.gen(function*() {
      const commands = [[], ["migrate"], ["run"], ["enqueue"], ["stats"], ["dlq"], ["dlq", "list"], ["dlq", "retry"], ["keygen"]]
      const results = yield* Effect.forEach(commands, (command) => runCli([...command, "--help"]), { concurrency: 4 })
      // And the binary itself, once.
      const binary = yield* runBinary(["--help"])
      expect(binary.code).toBe(0)
      expect(binary.stdout).toContain("webhook-worker")
      for (const [index, result] of results.entries()) {
        expect(result.code, commands[index]!.join(" ")).toBe(0)
        expect(result.stdout).toContain("USAGE")
      }
    }), 60_000)

  it.live("keygen prints a fresh base64 32-byte key", () =>
    Effect.gen(function*() {
      const [a, b] = yield* Effect.all([runBinary(["keygen"]), runCli(["keygen"])], { concurrency: 2 })
      expect(a!.code).toBe(0)
      expect(Buffer.from(a!.stdout.trim(), "base64")).toHaveLength(32)
      expect(a!.stdout).not.toBe(b!.stdout)
    }))

  it.live("migrate applies once, is safe to run twice, and from two processes at once", () =>
    Effect.gen(function*() {
      const name = `ww_mig_${process.pid}_${Date.now().toString(36)}`
      const admin = new Pg.Client({ connectionString: adminUrl() })
      yield* Effect.promise(() => admin.connect().then(() => admin.query(`CREATE DATABASE ${name}`)))
      yield* Effect.addFinalizer(() => Effect.promise(() => admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).then(() => admin.end())))
      const url = databaseUrl(name)
      // Two processes at once: the advisory lock makes the second wait, then find nothing to do.
      const [first, second] = yield* Effect.all([runBinary(["migrate"], { DATABASE_URL: url }), runBinary(["migrate"], { DATABASE_URL: url })], { concurrency: 2 })
      expect([first!.code, second!.code]).toEqual([0, 0])
      const outputs = [first!.stdout.trim(), second!.stdout.trim()].sort()
      expect(outputs[0]).toMatch(/^Applied 0001_schema/)
      expect(outputs[1]).toBe("Database schema is up to date.")
      const again = yield* runCli(["migrate"], { DATABASE_URL: url })
      expect(again.stdout.trim()).toBe("Database schema is up to date.")
      const client = new Pg.Client({ connectionString: url })
      const rows = yield* Effect.promise(() => client.connect().then(() => client.query("SELECT version FROM webhook_worker_migrations ORDER BY version")).finally(() => client.end()))
      expect(rows.rows.map((r: { version: number }) => r.version)[0]).toBe(1)
    }).pipe(Effect.scoped), 60_000)

  it.live("enqueue prints the id; the row is queued encrypted; an idempotency key repeat prints the same id", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const args = ["enqueue", "--url", "https://example.com/hook", "--secret", "s3cr3t-value", "--event-type", "order.created", "--payload", `{"order":1}`]
      const plain = yield* runCli(args, env(db.url))
      expect(plain.code).toBe(0)
      expect(plain.stdout.trim()).toMatch(/^[0-9a-f-]{36}$/)
      const keyed = [...args, "--idempotency-key", "order-1", "--user-id", "u1", "--max-attempts", "3", "--json"]
      const [a, b] = [yield* runCli(keyed, env(db.url)), yield* runCli(keyed, env(db.url))]
      expect(JSON.parse(a.stdout)).toEqual({ id: expect.any(String), duplicate: false })
      expect(JSON.parse(b.stdout)).toEqual({ id: JSON.parse(a.stdout).id, duplicate: true })
      // Without --json a repeat prints the same id alone on stdout (for ID=$(…)); the remark goes to stderr.
      const repeat = yield* runCli(keyed.filter((arg) => arg !== "--json"), env(db.url))
      expect(repeat.code).toBe(0)
      expect(repeat.stdout).toBe(`${JSON.parse(a.stdout).id}\n`)
      expect(repeat.stderr.trim()).toBe("already queued with this idempotency key: nothing new was queued")
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ secret: string; max_attempts: number; userId: string | null; payload: unknown }>`
        SELECT secret, max_attempts, "userId", payload FROM webhook_delivery_queue ORDER BY "createdAt"`
      expect(rows).toHaveLength(2)
      expect(rows[0]!.secret).toMatch(/^enc:v1:/)
      expect(rows[0]!.secret).not.toContain("s3cr3t")
      expect(rows[1]).toMatchObject({ max_attempts: 3, userId: "u1", payload: { order: 1 } })
    })), 60_000)

  it.live("a runtime failure is one line on stderr, exit 1; LOG_LEVEL=DEBUG, from the environment or an --env-file, adds its full cause", () =>
    Effect.gen(function*() {
      const unreachable = `postgres://postgres@127.0.0.1:${yield* freePort}/nowhere`
      const plain = yield* runCli(["stats"], { DATABASE_URL: unreachable })
      expect(plain.code).toBe(1)
      expect(oneLine(plain.stderr)).toMatch(/^webhook-worker: database error: .*ECONNREFUSED/)
      const dir = mkdtempSync(join(tmpdir(), "ww-debug-"))
      try {
        const debugFile = join(dir, "debug.env")
        writeFileSync(debugFile, `DATABASE_URL=${unreachable}\nLOG_LEVEL=DEBUG\n`)
        const quietFile = join(dir, "quiet.env")
        writeFileSync(quietFile, "LOG_LEVEL=INFO\n")
        for (const [args, env] of [
          [["stats"], { DATABASE_URL: unreachable, LOG_LEVEL: "debug" }],
          [["stats", "--env-file", debugFile], { LOG_LEVEL: "INFO" }]
        ] as const) {
          const debug = yield* runCli(args, env)
          expect(debug.code, args.join(" ")).toBe(1)
          const [first, ...rest] = debug.stderr.trim().split("\n")
          expect(first).toBe(plain.stderr.trim())
          expect(rest.join("\n"), args.join(" ")).toMatch(/ECONNREFUSED[\s\S]*\n\s+at /)
        }
        // A later file wins: its LOG_LEVEL=INFO keeps the failure to one line.
        const later = yield* runCli(["stats", "--env-file", debugFile, "--env-file", quietFile], {})
        expect(later.code).toBe(1)
        expect(oneLine(later.stderr)).toBe(plain.stderr.trim())
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    }), 60_000)

  it.live("bad input: one line naming the culprit, exit 2", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const base = ["enqueue", "--url", "https://example.com/hook", "--secret", "s", "--event-type", "e"]
      const cases: Array<[ReadonlyArray<string>, Record<string, string>, RegExp]> = [
        [[...base, "--payload", "{nope"], env(db.url), /^webhook-worker: --payload: not valid JSON/],
        [[...base, "--payload", "1", "--max-attempts", "0"], env(db.url), /^webhook-worker: --max-attempts: expected an integer of at least 1, got "0"/],
        [["enqueue", "--url", "ftp://x", "--secret", "s", "--event-type", "e", "--payload", "1"], env(db.url), /^webhook-worker: --url: scheme must be http or https, got ftp$/],
        [["enqueue", "--url", "https://x", "--event-type", "e", "--payload", "1"], env(db.url), /^webhook-worker: --secret: is required with --url$/],
        [[...base, "--payload", "1", "--endpoint", "x"], env(db.url), /^webhook-worker: --endpoint: cannot be combined with --url or --secret$/],
        [["enqueue", "--url", "https://x", "--secret", "s", "--payload", "1"], env(db.url), /^webhook-worker: Expected to find option: '--event-type'/],
        [[...base, "--payload", "1"], { DATABASE_URL: db.url }, /^webhook-worker: WEBHOOK_SECRET_ENCRYPTION_KEY: is required/],
        [["stats"], { ...env(db.url), WORKER_BATCH_SIZE: "0" }, /^webhook-worker: WORKER_BATCH_SIZE: expected an integer from 1 to 10000, got "0"$/],
        [["dlq", "list", "--limit", "x"], env(db.url), /^webhook-worker: --limit: expected an integer of at least 1, got "x"/],
        [["dlq", "retry"], env(db.url), /^webhook-worker: id: give one or more ids, or --all$/],
        [["dlq", "retry", "nope"], env(db.url), /^webhook-worker: id: "nope" is not a delivery id/],
        [["dlq", "retry", "--all", "--since", "yesterday"], env(db.url), /^webhook-worker: --since: "yesterday" is not an ISO-8601 time \(e\.g\. 2025-10-29T00:00:00Z or 2025-10-29\)$/],
        [["run", "--instance", "0"], env(db.url), /^webhook-worker: --instance: expected an integer of at least 1, got "0"/],
        [["frobnicate"], env(db.url), /^webhook-worker: Invalid subcommand/]
      ]
      const results = yield* Effect.forEach(cases, ([args, vars]) => runCli(args, vars), { concurrency: 4 })
      for (const [index, result] of results.entries()) {
        const [args, , pattern] = cases[index]!
        expect(result.code, args.join(" ")).toBe(2)
        expect(oneLine(result.stderr), args.join(" ")).toMatch(pattern)
      }
      const binary = yield* runBinary([...base, "--payload", "{nope"], env(db.url))
      expect(binary.code).toBe(2)
      expect(oneLine(binary.stderr)).toMatch(/^webhook-worker: --payload: not valid JSON/)
      const sql = yield* SqlClient.SqlClient
      const [count] = yield* sql<{ n: string }>`SELECT count(*) AS n FROM webhook_delivery_queue`
      expect(count!.n).toBe("0")
    })), 90_000)

  it.live("no DATABASE_URL with an env file or NODE_ENV=production: refused (exit 2, one line), the embedded database untouched", () =>
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "ww-cli-production-"))),
        (path) => Effect.sync(() => rmSync(path, { recursive: true, force: true }))
      )
      // The service's env file with DATABASE_URL missing, or emptied.
      const missing = join(dir, "missing.env")
      writeFileSync(missing, `WEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\nLOG_LEVEL=INFO\n`)
      const emptied = join(dir, "emptied.env")
      writeFileSync(emptied, `DATABASE_URL=\nWEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\n`)
      const because = (why: string) =>
        `webhook-worker: DATABASE_URL: is required (${why}); the embedded database is for development only`
      const cases: Array<[ReadonlyArray<string>, Record<string, string>, string]> = [
        [["run", "--instance", "1", "--env-file", missing], {}, because("an --env-file was given")],
        [["stats", "--env-file", emptied], {}, because("an --env-file was given")],
        [["migrate", "--env-file", missing], {}, because("an --env-file was given")],
        [["enqueue", "--url", "https://x.example", "--secret", "s", "--event-type", "e", "--payload", "1", "--env-file", missing], {}, because("an --env-file was given")],
        [["run"], { NODE_ENV: "production", WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY }, because("NODE_ENV=production")],
        [["dlq", "list"], { NODE_ENV: "production" }, because("NODE_ENV=production")],
        [["stats", "--env-file", missing], { NODE_ENV: "production" }, because("an --env-file was given, NODE_ENV=production")]
      ]
      // Real processes, in a folder of their own: an embedded database would appear in ./.data.
      const results = yield* Effect.forEach(cases, ([args, vars]) => runBinary(args, vars, { cwd: dir }), { concurrency: 2 })
      for (const [index, result] of results.entries()) {
        const [args, , line] = cases[index]!
        expect(result.code, args.join(" ")).toBe(2)
        expect(result.stderr.trimEnd(), args.join(" ")).toBe(line)
        expect(result.stdout, args.join(" ")).toBe("")
      }
      expect(existsSync(join(dir, ".data"))).toBe(false)
      // The same file with DATABASE_URL set is fine (test/ops/Deployment.test.ts runs the guide so);
      // with no env file and no NODE_ENV=production the embedded database serves (test/embedded).
    }).pipe(Effect.scoped), 60_000)

  it("run through its shebang (as systemd and the admin wrapper do), a missing --env-file is the CLI's error, not Node's", () => {
    const bin = join(import.meta.dirname, "..", "..", "bin", "webhook-worker.js")
    const result = spawnSync(bin, ["stats", "--env-file", "/nonexistent/webhook-worker.env"], {
      encoding: "utf8",
      env: { PATH: `${dirname(process.execPath)}:/usr/bin:/bin` }
    })
    expect(result.stderr.trimEnd()).toBe("webhook-worker: --env-file: cannot read /nonexistent/webhook-worker.env: ENOENT")
    expect(result.status).toBe(2)
  })

  it.live("--env-file may be given more than once: a later file wins, an empty value unsets", () =>
    withDb(Effect.scoped(Effect.gen(function*() {
      const db = yield* TestDb
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(join(tmpdir(), "ww-cli-envfiles-"))),
        (path) => Effect.sync(() => rmSync(path, { recursive: true, force: true }))
      )
      const service = join(dir, "webhook-worker.env")
      writeFileSync(service, `DATABASE_URL=postgresql://nobody:wrong@127.0.0.1:1/none\nWEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\nWORKER_BATCH_SIZE=0\n`)
      const admin = join(dir, "admin.env")
      writeFileSync(admin, `DATABASE_URL=${db.url}\nWORKER_BATCH_SIZE=\n`)
      const both = yield* runCli(["stats", "--json", "--env-file", service, "--env-file", admin])
      expect(both.stderr).toBe("")
      expect(both.code).toBe(0)
      expect(JSON.parse(both.stdout)).toEqual([])
      // Alone, the first file's bad value is reported, naming the variable.
      const alone = yield* runCli(["stats", "--env-file", service])
      expect(alone.code).toBe(2)
      expect(oneLine(alone.stderr)).toBe(`webhook-worker: WORKER_BATCH_SIZE: expected an integer from 1 to 10000, got "0"`)
    }))), 60_000)

  it.live("stats, dlq list and dlq retry on a real queue", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, last_error, last_response_status, "updatedAt")
                 VALUES ('https://a.example/h', 's', 'order.created', '{}', 'dead_letter', 5, 'HTTP 500', 500, now() - interval '2 hours'),
                        ('https://b.example/h', 's', 'order.paid', '{}', 'dead_letter', 1, 'HTTP 404: rejected', 404, now() - interval '1 hour'),
                        ('https://c.example/h', 's', 'order.paid', '{}', 'dead_letter', 2, 'timed out', NULL, now()),
                        ('https://d.example/h', 's', 'order.paid', '{}', 'pending', 0, NULL, NULL, now()),
                        ('https://e.example/h', 's', 'order.paid', '{}', 'delivered', 1, NULL, 200, now())`
      const stats = yield* runCli(["stats", "--json"], env(db.url))
      expect(stats.code).toBe(0)
      const byStatus = Object.fromEntries((JSON.parse(stats.stdout) as Array<{ status: string; count: number }>).map((r) => [r.status, r.count]))
      expect(byStatus).toEqual({ pending: 1, delivered: 1, dead_letter: 3 })
      const table = yield* runCli(["stats"], env(db.url))
      expect(table.stdout.split("\n")[0]).toMatch(/^status\s+count\s+oldest_pending\s+avg_attempts$/)
      expect(table.stdout).toMatch(/dead_letter\s+3\s/)

      const list = yield* runCli(["dlq", "list", "--json", "--limit", "2"], env(db.url))
      const dead = JSON.parse(list.stdout) as Array<{ id: string; event_type: string; last_error: string }>
      expect(dead.map((d) => d.last_error)).toEqual(["timed out", "HTTP 404: rejected"])

      const one = yield* runCli(["dlq", "retry", dead[0]!.id], env(db.url))
      expect(one.stdout.trim()).toBe("Requeued 1 dead letter.")
      const since = new Date(Date.now() - 90 * 60_000).toISOString()
      const filtered = yield* runCli(["dlq", "retry", "--all", "--event-type", "order.paid", "--since", since], env(db.url))
      expect(filtered.stdout.trim()).toBe("Requeued 1 dead letter.")
      const rest = yield* runCli(["dlq", "retry", "--all"], env(db.url))
      expect(rest.stdout.trim()).toBe("Requeued 1 dead letter.")
      const rows = yield* sql<{ status: string; attempt_count: number; due: boolean }>`
        SELECT status, attempt_count, next_retry_at <= now() AS due FROM webhook_delivery_queue WHERE url <> 'https://e.example/h'`
      for (const row of rows) expect(row).toEqual({ status: "pending", attempt_count: 0, due: true })
      const unknown = yield* runCli(["dlq", "retry", "00000000-0000-0000-0000-000000000000"], env(db.url))
      expect(unknown.code).toBe(1)
      expect(unknown.stderr.trim()).toBe("webhook-worker: not dead letters (unknown or not dead-lettered): 00000000-0000-0000-0000-000000000000")
    })), 60_000)
})
