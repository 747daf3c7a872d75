import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Option, type Scope } from "effect"
import { writeFileSync } from "node:fs"
import { createConnection, createServer, type Socket } from "node:net"
import { spawn } from "node:child_process"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect } from "vitest"
import { runCli, spawnCli } from "../utils/Cli.js"
import { makeReceiver } from "../utils/Receiver.js"
import { TestDb } from "../utils/TestDatabase.js"
import { PgClient as Pg } from "@effect/sql-pg"
import { Redacted } from "effect"
import { eventually, TEST_KEY } from "../utils/WorkerHarness.js"

const withDb = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | TestDb | Scope.Scope>) =>
  Effect.gen(function*() {
    const db = yield* TestDb
    return yield* effect.pipe(Effect.provide(Pg.layer({ url: Redacted.make(db.url), maxConnections: 3 })))
  }).pipe(Effect.provide(Layer.fresh(TestDb.Default)), Effect.scoped)

const workerEnv = (url: string, extra: Record<string, string> = {}) => ({
  DATABASE_URL: url,
  WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
  METRICS_ENABLED: "false",
  RETRY_BASE_DELAY: "0.2",
  ...extra
})

const statusCounts = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ status: string; n: string }>`SELECT status, count(*) AS n FROM webhook_delivery_queue GROUP BY status`).pipe(
    Effect.map((rows) => Object.fromEntries(rows.map((row) => [row.status, Number(row.n)]))),
    Effect.orDie
  )

const insertMany = (count: number, url: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`INSERT INTO webhook_delivery_queue (url, secret, event_type, payload)
        SELECT ${url}, 'test_secret', 'load.test', json_build_object('n', n) FROM generate_series(1, ${count}) AS n`).pipe(Effect.orDie)


/**
 * A TCP proxy in front of the test's PostgreSQL that holds every connection until released: the
 * worker's start-up waits at its first connection for as long as the test likes.
 */
const holdingProxy = (databaseUrl: string) =>
  Effect.acquireRelease(
    Effect.async<{ url: string; held: () => number; release: () => void; cut: () => void; close: () => void }>((resume) => {
      const target = new URL(databaseUrl)
      const waiting: Array<Socket> = []
      const open = new Set<Socket>()
      let holding = true
      const forward = (client: Socket) => {
        const upstream = createConnection({ host: target.hostname, port: Number(target.port || 5432) })
        for (const socket of [client, upstream]) {
          open.add(socket)
          socket.on("error", () => socket.destroy())
          socket.on("close", () => open.delete(socket))
        }
        client.pipe(upstream).pipe(client)
      }
      const server = createServer((client) => {
        if (holding) {
          client.pause()
          waiting.push(client)
        } else forward(client)
      })
      // The database gone: every connection dropped, new ones refused.
      const cut = () => {
        for (const socket of [...waiting, ...open]) socket.destroy()
        server.close()
      }
      server.listen(0, "127.0.0.1", () => {
        const address = server.address() as { port: number }
        const url = new URL(databaseUrl)
        url.port = String(address.port)
        resume(Effect.succeed({
          url: url.toString(),
          held: () => waiting.length,
          release: () => {
            holding = false
            for (const client of waiting.splice(0)) forward(client)
          },
          cut,
          close: cut
        }))
      })
    }),
    (proxy) => Effect.sync(() => proxy.close())
  )

/**
 * Runs the binary as systemd does with StandardOutput=journal: stdout and stderr one stream, and
 * JOURNAL_STREAM naming that stream's device:inode (`stream` overrides it). Output as lines.
 */
const spawnUnderJournal = (args: ReadonlyArray<string>, env: Record<string, string>, stream?: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const bin = join(import.meta.dirname, "..", "..", "bin", "webhook-worker.js")
      const script = stream === undefined
        ? `exec 3>&1; export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/3); exec 3>&-; exec "$@" 2>&1`
        : `export JOURNAL_STREAM=${stream}; exec "$@" 2>&1`
      const child = spawn("sh", ["-c", script, "sh", process.execPath, bin, ...args], {
        env: { PATH: process.env.PATH ?? "", ...env },
        stdio: ["ignore", "pipe", "inherit"]
      })
      const lines: Array<string> = []
      let buffered = ""
      child.stdout!.on("data", (chunk: Buffer) => {
        const parts = (buffered + chunk.toString()).split("\n")
        buffered = parts.pop()!
        lines.push(...parts)
      })
      const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))
      return { child, lines, exited: Effect.promise(() => exited) }
    }),
    ({ child }) => Effect.sync(() => void child.kill("SIGKILL"))
  )

describe("the worker process", () => {
  it.live("SIGKILL mid-run: a new worker delivers every row once the dead worker's leases expire", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      // The first worker's requests hang until it is killed mid-attempt.
      let hang = true
      receiver.respond = () => ({ status: 200, delayMs: hang ? 60_000 : 0 })
      yield* insertMany(80, receiver.url())
      const env = workerEnv(db.url, { MAX_CONCURRENT_DELIVERIES: "10", DELIVERY_TIMEOUT: "3", WORKER_LEASE_SECONDS: "4" })
      const first = yield* spawnCli(["run"], env)
      yield* receiver.waitForRequests(10)
      // A batch (WORKER_BATCH_SIZE 10) is claimed ahead behind the 10 hanging slots, handed back
      // once it has waited half the lease's slack (0.5 s), and no more is claimed while every
      // slot hangs; the kill comes before the attempts' 3 s timeout.
      yield* eventually(Effect.map(statusCounts, (c) => c.processing === 20 || undefined), "a batch claimed ahead", 2000)
      yield* eventually(Effect.map(statusCounts, (c) => c.processing === 10 || undefined), "the batch held ahead handed back", 2000)
      yield* first.signal("SIGKILL")
      yield* first.exited
      expect(yield* statusCounts).toEqual({ processing: 10, pending: 70 })
      hang = false
      const second = yield* spawnCli(["run", "--instance", "2"], env)
      yield* eventually(Effect.map(statusCounts, (c) => c.delivered === 80 || undefined), "every row delivered", 30_000)
      yield* second.signal("SIGTERM")
      expect(yield* second.exited).toBe(0)
      const ids = new Set(receiver.requests.map((r) => r.headers["webhook-id"]))
      expect(ids.size).toBe(80)
      // At-least-once: exactly the 10 rows in flight at the kill were sent again, with the same webhook-id.
      expect(receiver.requests).toHaveLength(90)
    })), 60_000)

  it.live("SIGTERM drains: in-flight deliveries finish, the process exits 0 and leaves nothing claimed", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 1500 })
      const worker = yield* spawnCli(["run"], workerEnv(db.url, { DELIVERY_TIMEOUT: "5" }))
      yield* worker.waitForLine(/Worker started/)
      yield* insertMany(5, receiver.url())
      yield* receiver.waitForRequests(5)
      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
      expect(yield* statusCounts).toEqual({ delivered: 5 })
      expect(worker.lines.some((line) => line.includes("Worker stopped"))).toBe(true)
    })), 30_000)

  it.live("SIGTERM after the grace period hands unfinished deliveries back, due at once", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 8000 })
      const worker = yield* spawnCli(["run"], workerEnv(db.url, { DELIVERY_TIMEOUT: "10", SHUTDOWN_GRACE_PERIOD: "0.5" }))
      yield* worker.waitForLine(/Worker started/)
      yield* insertMany(3, receiver.url())
      yield* receiver.waitForRequests(3)
      const t0 = Date.now()
      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
      expect(Date.now() - t0).toBeLessThan(5000)
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ status: string; locked_by: string | null; attempt_count: number; due: boolean }>`
        SELECT status, locked_by, attempt_count, next_retry_at <= now() AS due FROM webhook_delivery_queue`
      expect(rows).toHaveLength(3)
      for (const row of rows) expect(row).toEqual({ status: "pending", locked_by: null, attempt_count: 1, due: true })
    })), 30_000)

  it.live("SIGHUP while the worker is still starting (its database connection held open) neither kills it nor is lost: the reload applies once it listens", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      const proxy = yield* holdingProxy(db.url)
      const envFile = join(tmpdir(), `ww-early-hup-${process.pid}-${Date.now()}.env`)
      writeFileSync(envFile, "LOG_LEVEL=WARN\n")
      const worker = yield* spawnCli(["run", "--env-file", envFile], workerEnv(proxy.url))
      yield* eventually(Effect.sync(() => proxy.held() > 0 || undefined), "the worker waiting for its database", 10_000)
      writeFileSync(envFile, "LOG_LEVEL=INFO\n")
      yield* worker.signal("SIGHUP")
      // Node's default action would have ended the process by now.
      yield* Effect.sleep("300 millis")
      expect(worker.process.exitCode).toBeNull()
      expect(worker.process.signalCode).toBeNull()
      proxy.release()
      const reloaded = yield* worker.waitForLine(/Configuration reloaded/)
      expect(JSON.parse(reloaded).changed).toBe("logLevel")
      // LOG_LEVEL=INFO now: attempts are logged.
      yield* insertMany(1, receiver.url())
      yield* worker.waitForLine(/Delivering webhook.*"outcome":"delivered"/)
      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
    })), 30_000)

  it.live("under systemd's journal stream every line carries its syslog priority (journalctl -p warning finds warnings); elsewhere none", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      const envFile = join(tmpdir(), `ww-journal-${process.pid}-${Date.now()}.env`)
      writeFileSync(envFile, "LOG_LEVEL=INFO\n")
      const worker = yield* spawnUnderJournal(["run", "--env-file", envFile], workerEnv(db.url))
      const lineWith = (text: string) =>
        eventually(Effect.sync(() => worker.lines.find((line) => line.includes(text))), text, 15_000)
      expect(yield* lineWith("Worker started")).toMatch(/^<6>\{/)
      yield* insertMany(1, receiver.url())
      expect(yield* lineWith("Delivering webhook")).toMatch(/^<6>\{/)
      writeFileSync(envFile, "LOG_LEVEL=INFO\nMETRICS_PORT=9999\n")
      worker.child.kill("SIGHUP")
      expect(yield* lineWith("apply only after a restart")).toMatch(/^<4>\{/)
      writeFileSync(envFile, "WORKER_BATCH_SIZE=lots\n")
      worker.child.kill("SIGHUP")
      expect(yield* lineWith("Reload failed")).toMatch(/^<3>\{/)
      worker.child.kill("SIGTERM")
      expect(yield* worker.exited).toBe(0)
      // Every line: the prefix its level calls for, then the plain JSON line.
      for (const line of worker.lines.filter((l) => l !== "")) {
        const level = (JSON.parse(line.slice(3)) as { level: string }).level
        expect(line.slice(0, 3), line).toBe({ DEBUG: "<7>", INFO: "<6>", WARN: "<4>", ERROR: "<3>" }[level])
      }

      // A command's failure line is an error.
      const unreachable = `postgres://postgres@127.0.0.1:1/nowhere`
      const failed = yield* spawnUnderJournal(["stats"], { DATABASE_URL: unreachable })
      expect(yield* failed.exited).toBe(1)
      expect(failed.lines[0]).toMatch(/^<3>webhook-worker: database error: /)

      // JOURNAL_STREAM naming another stream (output redirected away from the journal): no prefix.
      const elsewhere = yield* spawnUnderJournal(["stats"], { DATABASE_URL: unreachable }, "1:1")
      expect(yield* elsewhere.exited).toBe(1)
      expect(elsewhere.lines[0]).toMatch(/^webhook-worker: database error: /)
    })), 30_000)

  it.live("SIGTERM while the database is away still stops the worker, exit 0: the claim's retries give way", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const proxy = yield* holdingProxy(db.url)
      proxy.release()
      const worker = yield* spawnCli(["run"], workerEnv(proxy.url, { WORKER_POLL_INTERVAL: "0.2" }))
      yield* worker.waitForLine(/Worker started/)
      proxy.cut()
      yield* worker.waitForLine(/Claiming deliveries failed; retrying/, 15_000)
      yield* worker.signal("SIGTERM")
      const code = yield* worker.exited.pipe(Effect.timeoutOption("20 seconds"))
      expect(code).toEqual(Option.some(0))
      expect(worker.lines.some((line) => line.includes("Worker stopped"))).toBe(true)
    })), 60_000)

  it.live("SIGTERM with a result the database cannot take: after its 10 s the worker says so and exits 0, the row left to its lease", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 500 })
      const proxy = yield* holdingProxy(db.url)
      proxy.release()
      const worker = yield* spawnCli(["run"], workerEnv(proxy.url))
      yield* worker.waitForLine(/Worker started/)
      yield* insertMany(1, receiver.url())
      yield* receiver.waitForRequests(1)
      // The database goes while the receiver answers: the result has nowhere to go.
      proxy.cut()
      yield* worker.waitForLine(/Recording delivery results failed; retrying/, 15_000)
      yield* worker.signal("SIGTERM")
      const code = yield* worker.exited.pipe(Effect.timeoutOption("30 seconds"))
      expect(code).toEqual(Option.some(0))
      const unrecorded = worker.lines.find((line) => line.includes("Could not record every result before exit"))
      // The result, and the row's secret encrypted at rest if that write had not gone out either.
      expect(JSON.parse(unrecorded!)).toMatchObject({ level: "ERROR", unrecorded: expect.any(Number) })
      expect(JSON.parse(unrecorded!).unrecorded).toBeGreaterThanOrEqual(1)
      expect(yield* statusCounts).toEqual({ processing: 1 })
    })), 60_000)

  it.live("SIGINT drains like SIGTERM: in-flight deliveries finish, the process exits 0 and leaves nothing claimed", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 1500 })
      const worker = yield* spawnCli(["run"], workerEnv(db.url, { DELIVERY_TIMEOUT: "5" }))
      yield* worker.waitForLine(/Worker started/)
      yield* insertMany(3, receiver.url())
      yield* receiver.waitForRequests(3)
      expect(receiver.active).toBe(3)
      yield* worker.signal("SIGINT")
      expect(yield* worker.exited).toBe(0)
      expect(yield* statusCounts).toEqual({ delivered: 3 })
      expect(receiver.requests).toHaveLength(3)
      expect(worker.lines.some((line) => line.includes("Worker stopped"))).toBe(true)
    })), 30_000)

  it.live("SIGHUP applies the re-read env file live (concurrency, retry delay, log level) without dropping in-flight work; a bad file keeps the running settings", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      receiver.respond = (request) => (request.path === "/fail" ? { status: 500 } : { status: 200, delayMs: 800 })
      const envFile = join(tmpdir(), `ww-hup-${process.pid}-${Date.now()}.env`)
      writeFileSync(envFile, "LOG_LEVEL=WARN\nMAX_CONCURRENT_DELIVERIES=2\n")
      const worker = yield* spawnCli(["run", "--env-file", envFile], workerEnv(db.url, { DELIVERY_TIMEOUT: "5" }))
      const rowOf = (id: string) =>
        Effect.map(
          sql<{ status: string; attempt_count: number; due_in_s: number }>`
            SELECT status, attempt_count, extract(epoch FROM next_retry_at - now())::float8 AS due_in_s
            FROM webhook_delivery_queue WHERE id = ${id}`,
          (rows) => rows[0]!
        ).pipe(Effect.orDie)
      const insertFailing = Effect.flatMap(
        sql<{ id: string }>`INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, max_attempts)
                            VALUES (${receiver.url("/fail")}, 's', 'fail', '{}', 2) RETURNING id::text`,
        (rows) => Effect.succeed(rows[0]!.id)
      ).pipe(Effect.orDie)

      // Before: RETRY_BASE_DELAY=0.2, so a failing row uses its two attempts within a second or so.
      const early = yield* insertFailing
      yield* eventually(Effect.map(rowOf(early), (row) => row.status === "dead_letter" || undefined), "the early failing row dead-lettered", 5000)
      // LOG_LEVEL=WARN: the attempts were not logged.
      expect(worker.lines.some((line) => line.includes("Delivering webhook"))).toBe(false)

      // MAX_CONCURRENT_DELIVERIES=2: a slow receiver never sees more than 2 at once.
      receiver.maxActive = 0
      yield* sql`INSERT INTO webhook_delivery_queue (url, secret, event_type, payload)
                 SELECT ${receiver.url("/slow")}, 's', 'slow', json_build_object('n', n) FROM generate_series(1, 24) AS n`.pipe(Effect.orDie)
      yield* eventually(Effect.sync(() => receiver.requests.filter((r) => r.path === "/slow").length >= 4 || undefined), "4 slow requests")
      expect(receiver.maxActive).toBe(2)

      writeFileSync(envFile, "LOG_LEVEL=INFO\nMAX_CONCURRENT_DELIVERIES=5\nRETRY_BASE_DELAY=600\nMETRICS_PORT=9999\n")
      // The reload happens with deliveries held open by the receiver.
      expect(receiver.active).toBeGreaterThan(0)
      yield* worker.signal("SIGHUP")
      const reloaded = yield* worker.waitForLine(/Configuration reloaded/)
      expect(String(JSON.parse(reloaded).changed).split(",").sort()).toEqual(["logLevel", "maxConcurrentDeliveries", "retryBaseDelayMs"])
      const restart = yield* worker.waitForLine(/apply only after a restart/)
      expect(JSON.parse(restart).restart_needed_for).toBe("metricsPort")

      // After: up to 5 at once, and never more.
      receiver.maxActive = receiver.active
      yield* eventually(Effect.map(statusCounts, (c) => c.delivered === 24 || undefined), "every slow row delivered", 20_000)
      expect(receiver.maxActive).toBe(5)
      // In-flight work across the reload was neither dropped nor repeated: each row delivered once.
      const slow = receiver.requests.filter((r) => r.path === "/slow")
      expect(slow).toHaveLength(24)
      expect(new Set(slow.map((r) => r.headers["webhook-id"])).size).toBe(24)
      const [attempts] = yield* sql<{ n: string; once: string }>`
        SELECT count(*) AS n, count(*) FILTER (WHERE attempt_count = 1) AS once FROM webhook_delivery_queue WHERE event_type = 'slow'`.pipe(Effect.orDie)
      expect(attempts).toEqual({ n: "24", once: "24" })

      // RETRY_BASE_DELAY=600: a failing row now waits about ten minutes (±20 % jitter) for its retry.
      const late = yield* insertFailing
      const waiting = yield* eventually(Effect.map(rowOf(late), (row) => (row.status === "failed" ? row : undefined)), "the late failing row waiting")
      expect(waiting.attempt_count).toBe(1)
      expect(waiting.due_in_s).toBeGreaterThan(600 * 0.8 - 5)
      expect(waiting.due_in_s).toBeLessThanOrEqual(600 * 1.2)
      // LOG_LEVEL=INFO: attempts are logged now.
      const line = yield* worker.waitForLine(/Delivering webhook.*"outcome":"failed"/)
      expect(JSON.parse(line)).toMatchObject({ level: "INFO", delivery_id: late, attempt: 1, outcome: "failed" })

      writeFileSync(envFile, "WORKER_BATCH_SIZE=lots\n")
      yield* worker.signal("SIGHUP")
      const failed = yield* worker.waitForLine(/Reload failed/)
      expect(JSON.parse(failed).error).toBe("WORKER_BATCH_SIZE: expected an integer from 1 to 10000, got \"lots\"")
      yield* insertMany(1, receiver.url())
      yield* eventually(Effect.map(statusCounts, (c) => c.delivered === 25 || undefined), "still delivering")
      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
    })), 60_000)

  it.live("refuses to start on bad configuration with one line naming the variable (exit 2)", () =>
    Effect.gen(function*() {
      const missingKey = yield* runCli(["run"], { DATABASE_URL: "postgres://127.0.0.1/x" })
      expect(missingKey.code).toBe(2)
      expect(missingKey.stderr.trim().split("\n")).toEqual([
        "webhook-worker: WEBHOOK_SECRET_ENCRYPTION_KEY: is required to read or write webhook secrets (generate one with `webhook-worker keygen`)"
      ])
      const badLease = yield* runCli(["run"], { WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY, DATABASE_URL: "postgres://127.0.0.1/x", WORKER_LEASE_SECONDS: "5" })
      expect(badLease.code).toBe(2)
      expect(badLease.stderr.trim()).toBe("webhook-worker: WORKER_LEASE_SECONDS: must be longer than DELIVERY_TIMEOUT (15s), got 5s")
      const noDb = yield* runCli(["run"], { WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY, DATABASE_URL: "postgres://postgres:postgres@127.0.0.1:1/none" })
      expect(noDb.code).toBe(1)
      expect(noDb.stderr.trim().split("\n")).toHaveLength(1)
      expect(noDb.stderr).toMatch(/^webhook-worker: database error: .*ECONNREFUSED/)
      expect(noDb.stderr).not.toContain("postgres:postgres")
    }), 30_000)
})
