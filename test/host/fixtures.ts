import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Either, Layer, Redacted } from "effect"
import Pg from "pg"
import { decodeEncryptionKey } from "../../src/config/AppConfig.js"
import type { WorkerSettings } from "../../src/host/HostConfig.js"
import { Keyring } from "../../src/crypto/Keyring.js"
import { testDatabase } from "../utils/TestDatabase.js"
import { adminUrl, databaseUrl } from "../utils/urls.js"
import { TEST_KEY } from "../utils/WorkerHarness.js"

export { TEST_KEY }

/** Worker settings for host tests: fast polls and retries, loopback receivers allowed. */
export const fastWorker: WorkerSettings = {
  encryptionKey: TEST_KEY,
  allowPrivateNetworks: true,
  pollInterval: "200 millis",
  retryBaseDelay: "50 millis",
  retryBackoffFactor: 2,
  retryMaxDelay: "1 second",
  deliveryTimeout: "2 seconds",
  lease: "8 seconds",
  shutdownGracePeriod: "3 seconds"
}

/** The host's own PgClient on a fresh test database (the app's "PgLive"). */
export const hostPg = (options: Partial<PgClient.PgClientConfig> = {}) =>
  Layer.unwrapScoped(
    Effect.map(testDatabase, ({ url }) => PgClient.layer({ url: Redacted.make(url), maxConnections: 6, ...options }))
  )

/** The app's business table, written in the same transactions as the webhooks. */
export const createOrders = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql`CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, total integer NOT NULL)`).pipe(Effect.orDie)

export interface QueueRow {
  readonly id: string
  readonly status: string
  readonly url: string | null
  readonly endpoint_id: string | null
  readonly event_type: string
  readonly payload: unknown
  readonly max_attempts: number
  readonly attempt_count: number
  readonly user_id: string | null
  readonly idempotency_key: string | null
  readonly traceparent: string | null
  readonly secret: string | null
  readonly locked_by: string | null
  readonly due_in_s: number
}

const QUEUE_ROWS = `
SELECT id::text AS id, status, url, partner_webhook_id::text AS endpoint_id, event_type, payload, max_attempts,
       attempt_count, "userId" AS user_id, idempotency_key, traceparent, secret, locked_by,
       extract(epoch FROM next_retry_at - now())::float8 AS due_in_s
FROM webhook_delivery_queue ORDER BY "createdAt", id`

/** Every queue row, oldest first (Effect side). */
export const queueRows = Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<QueueRow>(QUEUE_ROWS)).pipe(Effect.orDie)

/** Every queue row, oldest first (pg side). */
export const queueRowsPg = async (pool: Pg.Pool) => (await pool.query<QueueRow & Pg.QueryResultRow>(QUEUE_ROWS)).rows

export const testKeyring = new Keyring(Either.getOrThrow(decodeEncryptionKey(TEST_KEY)), [])

export interface NewEndpoint {
  readonly url: string
  readonly secret: string
  readonly eventTypes?: ReadonlyArray<string> | null
  readonly enabled?: boolean
}

const INSERT_ENDPOINT = `
INSERT INTO partner_webhooks (url, secret, event_types, enabled, disabled_reason)
VALUES ($1, $2, $3, $4, CASE WHEN $4 THEN NULL ELSE 'disabled by test' END) RETURNING id::text AS id`

const endpointParams = (endpoint: NewEndpoint) => [
  endpoint.url,
  testKeyring.encrypt(endpoint.secret),
  endpoint.eventTypes ?? null,
  endpoint.enabled ?? true
]

/** Registers a partner endpoint the way `endpoints add` stores it (secret encrypted). */
export const insertEndpoint = (endpoint: NewEndpoint) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<{ id: string }>(INSERT_ENDPOINT, endpointParams(endpoint))).pipe(
    Effect.map((rows) => rows[0]!.id),
    Effect.orDie
  )

export const insertEndpointPg = async (pool: Pg.Pool, endpoint: NewEndpoint) =>
  (await pool.query<{ id: string }>(INSERT_ENDPOINT, endpointParams(endpoint))).rows[0]!.id

/** An empty database (no schema), for the migration path; dropped with the scope. */
export const emptyDatabase = Effect.acquireRelease(
  Effect.promise(async () => {
    const name = `ww_host_empty_${process.pid}_${Date.now().toString(36)}`
    const admin = new Pg.Client({ connectionString: adminUrl() })
    await admin.connect()
    await admin.query(`CREATE DATABASE ${name}`)
    await admin.end()
    return { name, url: databaseUrl(name) }
  }),
  ({ name }) =>
    Effect.promise(async () => {
      const admin = new Pg.Client({ connectionString: adminUrl() })
      await admin.connect()
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [name])
      await admin.query(`DROP DATABASE IF EXISTS ${name}`)
      await admin.end()
    })
)

/** Polls `check` (real time) until it returns something other than undefined/false. */
export const waitFor = async <A>(check: () => Promise<A | undefined | false>, what: string, timeoutMs = 10_000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  while (true) {
    const value = await check()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
