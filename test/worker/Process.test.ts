import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, Layer, type Scope } from "effect"
import { writeFileSync } from "node:fs"
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

describe("the worker process", () => {
  it.live("SIGKILL mid-run: a new worker delivers every row once the dead worker's leases expire", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      // The first worker's requests hang until it is killed mid-attempt.
      let hang = true
      receiver.respond = () => ({ status: 200, delayMs: hang ? 60_000 : 0 })
      yield* insertMany(80, receiver.url())
      const env = workerEnv(db.url, { MAX_CONCURRENT_DELIVERIES: "10", DELIVERY_TIMEOUT: "1.5", WORKER_LEASE_SECONDS: "2" })
      const first = yield* spawnCli(["run"], env)
      yield* receiver.waitForRequests(10)
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

  it.live("SIGHUP re-reads the env file: log level and concurrency change live; a bad file keeps the running settings", () =>
    withDb(Effect.gen(function*() {
      const db = yield* TestDb
      const receiver = yield* makeReceiver
      const envFile = join(tmpdir(), `ww-hup-${process.pid}-${Date.now()}.env`)
      writeFileSync(envFile, "LOG_LEVEL=WARN\n")
      const worker = yield* spawnCli(["run", "--env-file", envFile], workerEnv(db.url))
      yield* insertMany(1, receiver.url())
      yield* eventually(Effect.map(statusCounts, (c) => c.delivered === 1 || undefined), "first delivered")
      expect(worker.lines.some((line) => line.includes("Delivering webhook"))).toBe(false)

      writeFileSync(envFile, "LOG_LEVEL=INFO\nMAX_CONCURRENT_DELIVERIES=3\nMETRICS_PORT=9999\n")
      yield* worker.signal("SIGHUP")
      const reloaded = yield* worker.waitForLine(/Configuration reloaded/)
      expect(JSON.parse(reloaded).changed).toBe("logLevel,maxConcurrentDeliveries")
      const restart = yield* worker.waitForLine(/apply only after a restart/)
      expect(JSON.parse(restart).restart_needed_for).toBe("metricsPort")
      yield* insertMany(1, receiver.url())
      const line = yield* worker.waitForLine(/Delivering webhook/)
      expect(JSON.parse(line)).toMatchObject({ level: "INFO", outcome: "delivered", attempt: 1 })

      writeFileSync(envFile, "WORKER_BATCH_SIZE=lots\n")
      yield* worker.signal("SIGHUP")
      const failed = yield* worker.waitForLine(/Reload failed/)
      expect(JSON.parse(failed).error).toBe("WORKER_BATCH_SIZE: expected an integer from 1 to 10000, got \"lots\"")
      yield* insertMany(1, receiver.url())
      yield* eventually(Effect.map(statusCounts, (c) => c.delivered === 3 || undefined), "still delivering")
      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
    })), 30_000)

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
