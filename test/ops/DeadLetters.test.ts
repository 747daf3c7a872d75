import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { describe, expect } from "vitest"
import { archiveDeadLetters } from "../../src/queue/Operations.js"
import { cliEnv, count, expectOk, expectUsageError, runCli, withDb } from "./support.js"

/** Rows in a given state, aged: `updatedAt` (dead-lettered at) and delivered_at `days` ago. */
const seed = (status: string, n: number, days: number, eventType = "order.created") =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ id: string }>(
      `INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, last_error,
                                           last_response_status, "updatedAt", delivered_at)
       SELECT 'https://partner.example/' || g, 'plain-secret', $4, json_build_object('n', g), $1, 5, 'HTTP 500', 500,
              now() - make_interval(days => $2), CASE WHEN $1 = 'delivered' THEN now() - make_interval(days => $2) END
       FROM generate_series(1, $3) g
       RETURNING id::text AS id`,
      [status, days, n, eventType]
    )).pipe(Effect.orDie, Effect.map((rows) => rows.map((row) => row.id)))

describe("dead letters and cleanup", () => {
  it.live("dlq archive moves only old dead letters, in batches, with their data and without secrets", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const old = yield* seed("dead_letter", 7, 40)
        const recent = yield* seed("dead_letter", 2, 3)
        yield* seed("failed", 3, 60)
        yield* seed("delivered", 2, 60)

        const result = yield* runCli(["dlq", "archive", "--older-than", "30", "--batch-size", "3"], cliEnv(db.url))
        const stdout = expectOk(result)
        // Not a terminal: one summary line, no progress bar.
        expect(stdout.trim().split("\n")).toHaveLength(1)
        expect(stdout).toMatch(/^Archived 7 dead letters dead-lettered before \d{4}-\d\d-\d\dT[\d:.]+Z into webhook_dead_letter_archive\.$/m)
        expect(result.stderr).toBe("")

        const sql = yield* SqlClient.SqlClient
        const archived = yield* sql<{ id: string; payload: { n: number }; last_error: string; attempt_count: number; dead_lettered_at: Date }>`
          SELECT id::text AS id, payload, last_error, attempt_count, dead_lettered_at FROM webhook_dead_letter_archive`
        expect(archived.map((row) => row.id).sort()).toEqual([...old].sort())
        expect(archived[0]).toMatchObject({ last_error: "HTTP 500", attempt_count: 5 })
        expect(Date.now() - archived[0]!.dead_lettered_at.getTime()).toBeGreaterThan(39 * 86_400_000)
        const columns = yield* sql<{ column_name: string }>`
          SELECT column_name FROM information_schema.columns WHERE table_name = 'webhook_dead_letter_archive'`
        expect(columns.map((c) => c.column_name)).not.toContain("secret")

        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE id = ANY($1::uuid[])", [old])).toBe(0)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE id = ANY($1::uuid[])", [recent])).toBe(2)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status IN ('failed', 'delivered')")).toBe(5)

        const again = JSON.parse(expectOk(yield* runCli(["dlq", "archive", "--older-than", "0", "--json"], cliEnv(db.url))))
        expect(again).toEqual({ archived: 2, cutoff: expect.any(String) })
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'dead_letter'")).toBe(0)
      })))

  it.live("an interrupted archive run loses nothing and a second run finishes it", () =>
    withDb(() =>
      Effect.gen(function*() {
        yield* seed("dead_letter", 10, 40)
        // Simulated crash after the second committed batch.
        const crashed = yield* archiveDeadLetters(30, {
          onProgress: (done) => (done >= 4 ? Effect.fail("crash" as const) : Effect.void)
        }, 2).pipe(Effect.flip)
        expect(crashed).toBe("crash")
        expect(yield* count("SELECT count(*) FROM webhook_dead_letter_archive")).toBe(4)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue")).toBe(6)
        let started = -1
        const rest = yield* archiveDeadLetters(30, { onStart: (n) => Effect.sync(() => (started = n)) }, 4)
        expect(started).toBe(6)
        expect(rest.archived).toBe(6)
        expect(yield* count("SELECT count(*) FROM webhook_dead_letter_archive")).toBe(10)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue")).toBe(0)
      })))

  it.live("cleanup removes delivered rows older than N days, and their log rows", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const old = yield* seed("delivered", 4, 31)
        yield* seed("delivered", 3, 5)
        yield* seed("dead_letter", 2, 90)
        const sql = yield* SqlClient.SqlClient
        yield* sql.unsafe(`INSERT INTO webhook_delivery_log (delivery_id, attempt, outcome) SELECT unnest($1::uuid[]), 1, 'delivered'`, [old])

        const result = yield* runCli(["cleanup", "--older-than", "30"], cliEnv(db.url))
        expect(expectOk(result).trim()).toBe("Removed 4 delivered webhooks older than 30 days.")
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'delivered'")).toBe(3)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'dead_letter'")).toBe(2)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_log")).toBe(0)
        expect(JSON.parse(expectOk(yield* runCli(["cleanup", "--older-than", "30", "--json"], cliEnv(db.url))))).toEqual({ removed: 0 })
      })))

  it.live("dlq retry --all honours --event-type and --since (--endpoint: Endpoints.test.ts)", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const oldOrders = yield* seed("dead_letter", 2, 10, "order.created")
        const newOrders = yield* seed("dead_letter", 2, 1, "order.created")
        yield* seed("dead_letter", 3, 1, "user.deleted")
        const since = new Date(Date.now() - 2 * 86_400_000).toISOString()
        const result = yield* runCli(["dlq", "retry", "--all", "--event-type", "order.created", "--since", since], cliEnv(db.url))
        expect(expectOk(result).trim()).toBe("Requeued 2 dead letters.")
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'pending' AND attempt_count = 0 AND id = ANY($1::uuid[])", [newOrders])).toBe(2)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'dead_letter' AND id = ANY($1::uuid[])", [oldOrders])).toBe(2)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'dead_letter' AND event_type = 'user.deleted'")).toBe(3)
      })))

  it.live("bad input: exit 2 and one line naming the flag", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const env = cliEnv(db.url)
        const cases: ReadonlyArray<[ReadonlyArray<string>, string]> = [
          [["dlq", "archive"], "--older-than"],
          [["dlq", "archive", "--older-than", "-3"], "--older-than"],
          [["dlq", "archive", "--older-than", "1.5"], "--older-than"],
          [["dlq", "archive", "--older-than", "3", "--batch-size", "0"], "--batch-size"],
          [["cleanup"], "--older-than"],
          [["cleanup", "--older-than", "thirty"], "--older-than"]
        ]
        const results = yield* Effect.forEach(cases, ([args]) => runCli(args, env), { concurrency: 3 })
        for (const [index, result] of results.entries()) expectUsageError(result, cases[index]![1])
        const noDatabase = yield* runCli(["cleanup", "--older-than", "3"], { DATABASE_URL: "mysql://nope" })
        expectUsageError(noDatabase, "DATABASE_URL")
      })))
})
