import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Redacted } from "effect"
import { readFileSync } from "node:fs"
import { createServer } from "node:net"
import { join } from "node:path"
import Pg from "pg"
import { describe, expect } from "vitest"
import { ensureMigrated } from "../../src/db/Migrator.js"
import { spawnCli } from "../utils/Cli.js"
import { makeReceiver } from "../utils/Receiver.js"
import { eventually, insertRaw, startWorker, statusIs } from "../utils/WorkerHarness.js"
import { cliEnv, expectOk, keyringOf, repoRoot, runCli, TEST_KEY, withDb } from "./support.js"

/** sql/roles.sql for a role of another name: roles are cluster-wide and test runs share the cluster. */
const rolesSql = (role: string) =>
  readFileSync(join(repoRoot, "sql", "roles.sql"), "utf8").replace(/\bwebhook_worker\b/g, role)

const PASSWORD = "worker-password"

/** Creates the role in the test database (as the owner), and drops it again before the database goes. */
const createRole = (ownerUrl: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const role = `ww_role_${process.pid}_${Date.now().toString(36)}`
      const owner = new Pg.Client({ connectionString: ownerUrl })
      await owner.connect()
      // PostgreSQL 12 to 14's default, whatever this server's version: PUBLIC may create in
      // schema public (this is the test's own database). roles.sql must take that away.
      await owner.query("GRANT CREATE ON SCHEMA public TO PUBLIC")
      // Twice: the file is safe to run again (after an upgrade).
      await owner.query(rolesSql(role))
      await owner.query(rolesSql(role))
      await owner.query(`ALTER ROLE ${role} PASSWORD '${PASSWORD}'`)
      const url = new URL(ownerUrl)
      url.username = role
      url.password = PASSWORD
      return { role, owner, url: url.toString() }
    }),
    ({ owner, role }) =>
      Effect.promise(async () => {
        await owner.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, [role])
        await owner.query(`DROP OWNED BY ${role}`)
        await owner.query(`DROP ROLE ${role}`)
        await owner.end()
      })
  )

const freePort = Effect.async<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as { port: number }
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** The SQLSTATE of a statement the role runs, or "ok". */
const attempt = (statement: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(statement)).pipe(
    Effect.as("ok"),
    Effect.catchAll((error) => Effect.succeed(String((error.cause as { code?: string } | undefined)?.code ?? error.message)))
  )

describe("the least-privilege webhook_worker role (sql/roles.sql)", () => {
  it("README's \"Database roles\" shows every GRANT and REVOKE of sql/roles.sql, as written there", () => {
    const roles = readFileSync(join(repoRoot, "sql", "roles.sql"), "utf8")
    const readme = readFileSync(join(repoRoot, "README.md"), "utf8")
    const section = readme.slice(readme.indexOf("### Database roles"), readme.indexOf("### Commands"))
    const statements = (text: string) =>
      text.split("\n").map((line) => line.replace(/\s+--.*$/, "").trim())
        .filter((line) => /^(GRANT|REVOKE) .*;$/.test(line))
    const shown = statements(section)
    // USAGE on the schema is named in prose ("plus CONNECT … and USAGE on the schema").
    const granted = statements(roles).filter((line) => !line.startsWith("GRANT USAGE ON SCHEMA"))
    expect(granted.length).toBeGreaterThan(8)
    expect(granted).toContain("REVOKE CREATE ON SCHEMA public FROM PUBLIC;")
    expect([...shown].sort()).toEqual([...granted].sort())
  })

  it.live("runs the worker: delivery, retry, dead letter, 410 endpoint-disable, audit log, secret encryption", () =>
    withDb((db) =>
      Effect.scoped(Effect.gen(function*() {
        const { owner, role, url } = yield* createRole(db.url)
        const receiver = yield* makeReceiver
        let flaky = 0
        receiver.respond = (request) => {
          if (request.path === "/flaky") return ++flaky === 1 ? { status: 503 } : { status: 200 }
          if (request.path === "/bad") return { status: 400, body: "no such hook" }
          if (request.path === "/gone") return { status: 410 }
          return { status: 200 }
        }
        // The owner registers the endpoint (the role may not insert endpoints).
        const { rows: [endpoint] } = yield* Effect.promise(() =>
          owner.query<{ id: string }>(
            `INSERT INTO partner_webhooks (url, secret) VALUES ($1, $2) RETURNING id::text AS id`,
            [receiver.url("/gone"), keyringOf(TEST_KEY).encrypt("whsec_Z29uZS1lbmRwb2ludA==")]
          ))

        yield* Effect.gen(function*() {
          // Start-up check of the migrations, as `run` does it: a read, no DDL.
          expect(yield* ensureMigrated).toEqual([])
          // The guide's producer insert works as this role too (INSERT on the queue).
          const ok = yield* insertRaw({ url: receiver.url("/ok"), secret: "plain-producer-secret" })
          const retried = yield* insertRaw({ url: receiver.url("/flaky") })
          const dead = yield* insertRaw({ url: receiver.url("/bad") })
          const sql = yield* SqlClient.SqlClient
          const [gone] = yield* sql<{ id: string }>`
            INSERT INTO webhook_delivery_queue (partner_webhook_id, event_type, payload)
            VALUES (${endpoint!.id}, 'call.completed', '{}') RETURNING id::text AS id`

          const stop = yield* startWorker()
          const delivered = yield* eventually(statusIs(ok, "delivered"), "delivered")
          const redelivered = yield* eventually(statusIs(retried, "delivered"), "delivered after a retry")
          const deadLettered = yield* eventually(statusIs(dead, "dead_letter"), "dead-lettered")
          yield* eventually(statusIs(gone!.id, "dead_letter"), "410 dead-lettered")
          const [disabled] = yield* eventually(
            Effect.map(
              sql<{ enabled: boolean; disabled_reason: string | null }>`SELECT enabled, disabled_reason FROM partner_webhooks WHERE id = ${endpoint!.id}`,
              (rows) => (rows[0]?.enabled === false ? rows : undefined)
            ),
            "endpoint disabled"
          )
          yield* stop

          // The producer's plaintext secret was encrypted in place (UPDATE on the queue).
          expect(delivered.secret).toMatch(/^enc:v1:/)
          expect(redelivered.attempt_count).toBe(2)
          expect(deadLettered.last_response_status).toBe(400)
          expect(disabled!.disabled_reason).toMatch(/410/)
          // One audit row per attempt (INSERT on the log, identity ids without a sequence grant).
          const logs = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM webhook_delivery_log`
          expect(logs[0]!.n).toBe(5)

          // And nothing beyond what it needs.
          const denied = yield* Effect.all({
            deleteQueue: attempt("DELETE FROM webhook_delivery_queue"),
            deleteLog: attempt("DELETE FROM webhook_delivery_log"),
            endpointSecret: attempt("UPDATE partner_webhooks SET secret = 'x'"),
            endpointUrl: attempt("UPDATE partner_webhooks SET url = 'https://evil.example'"),
            newEndpoint: attempt("INSERT INTO partner_webhooks (url, secret) VALUES ('https://evil.example', 'x')"),
            archive: attempt("SELECT * FROM webhook_dead_letter_archive"),
            cleanup: attempt("SELECT cleanup_delivered_webhooks(0)"),
            ddl: attempt("CREATE TABLE webhook_worker_scratch (id int)"),
            qualifiedDdl: attempt("CREATE TABLE public.webhook_worker_scratch (id int)"),
            view: attempt("CREATE VIEW webhook_worker_view AS SELECT 1 AS one"),
            fn: attempt("CREATE FUNCTION webhook_worker_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
            schema: attempt("CREATE SCHEMA webhook_worker_schema"),
            migrations: attempt("INSERT INTO webhook_worker_migrations (version, name) VALUES (999, 'x')")
          })
          expect(denied).toEqual({
            deleteQueue: "42501",
            deleteLog: "42501",
            endpointSecret: "42501",
            endpointUrl: "42501",
            newEndpoint: "42501",
            archive: "42501",
            cleanup: "42501",
            ddl: "42501",
            qualifiedDdl: "42501",
            view: "42501",
            fn: "42501",
            schema: "42501",
            migrations: "42501"
          })
          const [rights] = yield* sql<{ schema_create: boolean; database_create: boolean }>`
            SELECT has_schema_privilege(current_user, 'public', 'CREATE') AS schema_create,
                   has_database_privilege(current_user, current_database(), 'CREATE') AS database_create`
          expect(rights).toEqual({ schema_create: false, database_create: false })
          // What it may do: the columns a 410 writes, and the stats function.
          expect(yield* attempt(`UPDATE partner_webhooks SET enabled = true, disabled_reason = NULL, disabled_at = NULL, "updatedAt" = now()`)).toBe("ok")
          expect(yield* attempt("SELECT * FROM get_webhook_queue_stats()")).toBe("ok")
        }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 4 })))

        // The CLI as the role: the operator commands it may run, and a clear failure for one it may not.
        const asRole = cliEnv(url)
        expect(expectOk(yield* runCli(["stats"], asRole))).toContain("dead_letter")
        expect(expectOk(yield* runCli(["endpoints", "disable", endpoint!.id], asRole))).toContain("Disabled endpoint")
        const add = yield* runCli(["endpoints", "add", "--url", "https://partner.example"], asRole)
        expect(add.code).toBe(1)
        expect(add.stderr.trim()).toMatch(/^webhook-worker: database error: .*permission denied for table partner_webhooks/)
        expect(role).toMatch(/^ww_role_/)
      }))), 120_000)

  it.live("`webhook-worker run` as the role: starts, is ready, serves metrics, delivers, stops cleanly", () =>
    withDb((db) =>
      Effect.scoped(Effect.gen(function*() {
        const { url } = yield* createRole(db.url)
        const receiver = yield* makeReceiver
        const port = yield* freePort
        yield* Effect.scoped(Effect.gen(function*() {
          const worker = yield* spawnCli(["run", "--instance", "1"], {
            ...cliEnv(url),
            WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
            WORKER_POLL_INTERVAL: "0.2",
            METRICS_PORT: String(port)
          })
          yield* worker.waitForLine(/Worker started/, 30_000)
          const id = yield* insertRaw({ url: receiver.url("/process") })
          yield* receiver.waitForRequests(1, 15_000)
          expect(receiver.requests[0]!.headers["webhook-id"]).toBe(id)
          const fetchText = (path: string) =>
            Effect.promise(() => fetch(`http://127.0.0.1:${port}${path}`).then(async (r) => ({ status: r.status, text: await r.text() })))
          const ready = yield* fetchText("/readyz")
          expect(ready.status, ready.text).toBe(200)
          const metrics = yield* eventually(
            Effect.map(fetchText("/metrics"), (m) => (/webhook_queue_size\{status="delivered"\} 1\b/.test(m.text) ? m : undefined)),
            "the queue-size gauge, read as the role",
            20_000
          )
          expect(metrics.text).toContain("webhooks_delivered_total")
          yield* worker.signal("SIGTERM")
          expect(yield* worker.exited).toBe(0)
          expect(worker.stderr.join("")).not.toMatch(/permission denied/)
        }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(db.url), maxConnections: 2 }))))
      }))), 120_000)
})
