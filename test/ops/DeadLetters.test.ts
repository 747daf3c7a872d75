import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { describe, expect } from "vitest"
import { archiveDeadLetters, cleanupDelivered, retryAllDeadLetters } from "../../src/queue/Operations.js"
import { cliEnv, count, expectOk, expectUsageError, runCli, runCliOnTerminal, withDb } from "./support.js"

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

  it.live("cleanup removes delivered rows older than N days, and their log rows, in batches; nothing else", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const old = yield* seed("delivered", 25, 31)
        const recent = yield* seed("delivered", 3, 5)
        const undelivered = [
          ...(yield* seed("dead_letter", 2, 90)),
          ...(yield* seed("failed", 2, 90)),
          ...(yield* seed("pending", 2, 90))
        ]
        const sql = yield* SqlClient.SqlClient
        const addLogs = (ids: ReadonlyArray<string>) =>
          sql.unsafe(`INSERT INTO webhook_delivery_log (delivery_id, attempt, outcome) SELECT unnest($1::uuid[]), a, 'failed' FROM generate_series(1, 2) a`, [ids])
        yield* addLogs([...old, ...recent, ...undelivered])

        // 25 rows in batches of 10: three batches with rows, then an empty one ends the run.
        const result = yield* runCli(["cleanup", "--older-than", "30", "--batch-size", "10"], cliEnv(db.url))
        // Not a terminal: the one summary line, no progress bar.
        expect(expectOk(result)).toBe("Removed 25 delivered webhooks older than 30 days.\n")
        expect(result.stderr).toBe("")
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE id = ANY($1::uuid[])", [old])).toBe(0)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_log WHERE delivery_id = ANY($1::uuid[])", [old])).toBe(0)
        // Recent deliveries and every undelivered row stay, with their log rows.
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE id = ANY($1::uuid[])", [[...recent, ...undelivered]])).toBe(9)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_log")).toBe(18)

        const again = JSON.parse(expectOk(yield* runCli(["cleanup", "--older-than", "30", "--json"], cliEnv(db.url))))
        expect(again).toEqual({ removed: 0, cutoff: expect.any(String) })
        // Batch by batch, each committed on its own: progress after every batch, an empty one last.
        const more = yield* seed("delivered", 5, 40)
        yield* addLogs(more)
        const progress: Array<number> = []
        const batched = yield* cleanupDelivered(30, { onProgress: (done) => Effect.sync(() => progress.push(done)) }, 2)
        expect(batched.removed).toBe(5)
        expect(progress).toEqual([2, 4, 5, 5])
        expect(yield* count("SELECT count(*) FROM webhook_delivery_log WHERE delivery_id = ANY($1::uuid[])", [more])).toBe(0)
        // The SQL function the deployment guide names removes the same rows (and stays as it was).
        expect(yield* count("SELECT cleanup_delivered_webhooks(0)")).toBe(3)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_log")).toBe(12)
      })))

  it.live("cleanup shows a progress bar on a terminal, and still one summary line", () =>
    withDb((db) =>
      Effect.gen(function*() {
        yield* seed("delivered", 5, 40)
        const shown = yield* runCliOnTerminal(["cleanup", "--older-than", "30", "--batch-size", "2"], cliEnv(db.url))
        expect(shown.code, shown.output).toBe(0)
        expect(shown.output).toMatch(/cleanup \[#+\] 5\/5 100%/)
        expect(shown.output).toContain("Removed 5 delivered webhooks older than 30 days.")
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

  it.live("dlq retry --all works in batches and takes only rows dead-lettered by its start", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const dead = yield* seed("dead_letter", 7, 2)
        // Through the CLI: 7 rows in batches of 3.
        const result = yield* runCli(["dlq", "retry", "--all", "--batch-size", "3"], cliEnv(db.url))
        expect(expectOk(result)).toBe("Requeued 7 dead letters.\n")
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'pending' AND id = ANY($1::uuid[])", [dead])).toBe(7)

        // A requeued row that dead-letters again during the run (as a worker would, at once) is
        // not requeued twice by that run; a later run takes it.
        const sql = yield* SqlClient.SqlClient
        yield* sql`UPDATE webhook_delivery_queue SET status = 'dead_letter', "updatedAt" = now() - interval '1 day'`
        const requeuedIds: Array<string> = []
        const run = yield* retryAllDeadLetters({}, {
          onProgress: () =>
            Effect.gen(function*() {
              // After each batch: everything it requeued dies again right away.
              const again = yield* sql<{ id: string }>`
                UPDATE webhook_delivery_queue SET status = 'dead_letter', "updatedAt" = now()
                WHERE status = 'pending' RETURNING id::text AS id`
              requeuedIds.push(...again.map((row) => row.id))
            }).pipe(Effect.orDie)
        }, 2)
        expect(run.requeued).toBe(7)
        expect(new Set(requeuedIds).size).toBe(7)
        expect(requeuedIds).toHaveLength(7)
        expect(yield* count(`SELECT count(*) FROM webhook_delivery_queue WHERE status = 'dead_letter' AND "updatedAt" > $1`, [run.cutoff])).toBe(7)
        const next = yield* retryAllDeadLetters({}, {}, 100)
        expect(next.requeued).toBe(7)
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
          [["cleanup", "--older-than", "thirty"], "--older-than"],
          [["cleanup", "--older-than", "3", "--batch-size", "-1"], "--batch-size"],
          [["dlq", "retry", "--all", "--batch-size", "0"], "--batch-size"],
          [["dlq", "retry", "00000000-0000-4000-8000-000000000000", "--batch-size", "5"], "--batch-size"],
          [["dlq", "retry", "--all", "--since", "yesterday"], "--since"],
          [["dlq", "retry", "--all", "--since", "1"], "--since"],
          [["dlq", "retry", "--all", "--since", "Wed, 29 Oct 2025 00:00:00 GMT"], "--since"],
          [["dlq", "retry", "--all", "--since", "2025-02-30"], "--since"],
          [["dlq", "retry", "--all", "--since", "2025-10-29 10:00"], "--since"]
        ]
        const results = yield* Effect.forEach(cases, ([args]) => runCli(args, env), { concurrency: 3 })
        for (const [index, result] of results.entries()) expectUsageError(result, cases[index]![1])
        const noDatabase = yield* runCli(["cleanup", "--older-than", "3"], { DATABASE_URL: "mysql://nope" })
        expectUsageError(noDatabase, "DATABASE_URL")
        // ISO-8601 in its usual forms is taken.
        for (const since of ["2025-10-29", "2025-10-29T00:00:00Z", "2025-10-29T02:00:00.123+02:00", "2025-10-29T02:00+0200"]) {
          expect(expectOk(yield* runCli(["dlq", "retry", "--all", "--since", since], env))).toBe("Requeued 0 dead letters.\n")
        }
      })))
})
