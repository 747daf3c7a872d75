import * as SqlClient from "@effect/sql/SqlClient"
import * as SqlError from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import type Pg from "pg"
import { PgPool } from "../db/Database.js"
import { numberArray, textArray } from "./PgArray.js"

/** A row claimed by this worker, with what delivering it needs. */
export interface ClaimedDelivery {
  readonly id: string
  readonly userId: string | null
  readonly endpointId: string | null
  /** null when the row has no endpoint; false when the endpoint is disabled. */
  readonly endpointEnabled: boolean | null
  readonly url: string | null
  /** As stored: encrypted (enc:v1:…) or a producer's plaintext. */
  readonly secret: string | null
  /** The secret is the row's own (not the endpoint's), so it is re-encrypted in place when needed. */
  readonly secretFromRow: boolean
  /** The endpoint's previous secret while its rotation grace window lasts. */
  readonly previousSecret: string | null
  readonly eventType: string
  /** The payload's JSON text exactly as stored. */
  readonly payload: string
  readonly createdAtMs: number
  /** This attempt's number (attempt_count after the claim). */
  readonly attempt: number
  readonly maxAttempts: number
  readonly traceparent: string | null
  /** Claimed from another worker's expired lease. */
  readonly reclaimed: boolean
  /** Claimed from an expired lease with no attempts left (not counted as a new attempt): dead-lettered. */
  readonly exhausted: boolean
}

/** A claimed row whose columns are not what webhook_claim_deliveries returns: a schema mismatch. */
export class ClaimRowMismatch extends Data.TaggedError("ClaimRowMismatch")<{ readonly column: string; readonly expected: string; readonly got: string }> {
  override get message() {
    return `webhook_claim_deliveries returned ${this.got} in column ${this.column}, expected ${this.expected} (is the database migrated by this version?)`
  }
}

type ColumnType = "string" | "number" | "boolean"

// The claim function's columns and their types; `nullable` ones may be null.
const CLAIM_COLUMNS: ReadonlyArray<readonly [column: string, type: ColumnType, nullable: boolean]> = [
  ["id", "string", false],
  ["user_id", "string", true],
  ["endpoint_id", "string", true],
  ["endpoint_enabled", "boolean", true],
  ["url", "string", true],
  ["secret", "string", true],
  ["secret_from_row", "boolean", false],
  ["previous_secret", "string", true],
  ["event_type", "string", false],
  ["payload", "string", false],
  ["created_at_ms", "number", false],
  ["attempt", "number", false],
  ["max_attempts", "number", false],
  ["traceparent", "string", true],
  ["reclaimed", "boolean", false],
  ["exhausted", "boolean", false]
]

/** The first column of `row` whose value is not of its type, if any. */
const claimRowMismatch = (row: Readonly<Record<string, unknown>>): ClaimRowMismatch | undefined => {
  for (const [column, type, nullable] of CLAIM_COLUMNS) {
    const value = row[column]
    if (typeof value === type || (nullable && value === null)) continue
    return new ClaimRowMismatch({
      column,
      expected: nullable ? `${type} or null` : type,
      got: value === null ? "null" : value === undefined ? "nothing" : typeof value
    })
  }
  return undefined
}

/**
 * Checked by hand, not with Schema: a claim decodes every row of every batch, and Schema's
 * decoder allocated about 5 KB per row (measured with a sampling heap profile), a sixth of all
 * the worker allocates per delivery.
 */
const decodeClaimRows = (rows: ReadonlyArray<Readonly<Record<string, unknown>>>): Effect.Effect<Array<ClaimedDelivery>> => {
  const claimed: Array<ClaimedDelivery> = []
  for (const row of rows) {
    const mismatch = claimRowMismatch(row)
    // Not bad input (rows are validated at enqueue): the code and the database disagree, loudly.
    if (mismatch !== undefined) return Effect.die(mismatch)
    claimed.push(toClaimed(row as unknown as ClaimRow))
  }
  return Effect.succeed(claimed)
}

export type CompletionStatus = "delivered" | "failed" | "dead_letter"

/** The recorded result of one attempt. */
export interface Completion {
  readonly id: string
  readonly attempt: number
  readonly status: CompletionStatus
  /** For `failed`: how long until the row is due again. */
  readonly retryDelayMs: number | null
  readonly responseStatus: number | null
  readonly error: string | null
  readonly reason: string
  readonly responseBody: string | null
  readonly durationMs: number
  /** Disable this endpoint (a 410 from it). */
  readonly disableEndpoint: string | null
  /** The attempt's span when deliveries are traced: the batch write that records it links to it. */
  readonly span?: Tracer.AnySpan | undefined
}

/** A row's own secret, re-encrypted under the current key (it was plaintext or on an old key). */
export interface SecretUpdate {
  readonly id: string
  readonly secret: string
  /** The value it replaces: a value changed meanwhile (rotate-key) is left alone. */
  readonly replaces: string
}

/** A claimed row given back unattempted (or interrupted at shutdown), due again at once. */
export interface Release {
  readonly id: string
  readonly attempt: number
  /** The attempt was under way: it stays counted, since the request may have reached the receiver. */
  readonly started: boolean
}

// The claim and the batch completion are PL/pgSQL functions (migrations/0004_claim_plans.sql)
// so their plans are made once per session instead of on every call.
const CLAIM_SQL = "SELECT * FROM webhook_claim_deliveries($1, $2, $3)"

const COMPLETE_SQL = "SELECT webhook_complete_deliveries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) AS id"

const RELEASE_SQL = `
UPDATE webhook_delivery_queue q
SET status = 'pending',
    next_retry_at = now(),
    locked_by = NULL,
    locked_until = NULL,
    attempt_count = q.attempt_count - CASE WHEN r.started THEN 0 ELSE 1 END,
    last_error = CASE WHEN r.started THEN 'worker stopped during the attempt; outcome unknown' ELSE q.last_error END,
    "updatedAt" = now()
FROM unnest($2::uuid[], $3::int[], $4::bool[]) AS r(id, attempt, started)
WHERE q.id = r.id AND q.locked_by = $1 AND q.attempt_count = r.attempt AND q.status = 'processing'`

// Only rows due in the future count: a claim that came back short left no unlocked due rows.
const NEXT_DUE_SQL = `
SELECT (extract(epoch FROM (min(next_retry_at) - now())) * 1000)::float8 AS in_ms
FROM webhook_delivery_queue
WHERE status IN ('pending', 'failed', 'processing') AND next_retry_at > now()`

const STORE_SECRETS_SQL = `
UPDATE webhook_delivery_queue q
SET secret = s.secret
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS s(id, secret, replaces)
WHERE q.id = s.id AND q.secret = s.replaces`

export class DeliveryQueue extends Context.Tag("webhook-worker/DeliveryQueue")<DeliveryQueue, {
  readonly claim: (workerId: string, limit: number, leaseMs: number) => Effect.Effect<ReadonlyArray<ClaimedDelivery>, SqlError.SqlError>
  readonly complete: (workerId: string, completions: ReadonlyArray<Completion>, audit: boolean) => Effect.Effect<ReadonlySet<string>, SqlError.SqlError>
  readonly release: (workerId: string, releases: ReadonlyArray<Release>) => Effect.Effect<void, SqlError.SqlError>
  readonly storeSecrets: (updates: ReadonlyArray<SecretUpdate>) => Effect.Effect<void, SqlError.SqlError>
  /** Milliseconds until the next row falls due (retry or lease expiry), if any. */
  readonly nextDueInMs: Effect.Effect<number | null, SqlError.SqlError>
  /**
   * Runs the claim and the completion once, empty, on up to `connections` pooled connections at
   * once: PL/pgSQL compiles a function and plans its statements on a session's first call (tens
   * of milliseconds, measured), which the first deliveries after a start would otherwise wait for.
   */
  readonly warmUp: (workerId: string, connections: number) => Effect.Effect<void, SqlError.SqlError>
}>() {
  static readonly layer = Layer.effect(
    DeliveryQueue,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const hot = hotStatements(sql, yield* Effect.serviceOption(PgPool))
      return {
        claim: (workerId, limit, leaseMs) =>
          hot<Record<string, unknown>>(CLAIM_SQL, [workerId, leaseMs, limit]).pipe(Effect.flatMap(decodeClaimRows)),
        complete: (workerId, completions, audit) =>
          completions.length === 0
            ? Effect.succeed(new Set<string>())
            : hot<{ id: string }>(COMPLETE_SQL, [
              workerId,
              textArray(completions.map((c) => c.id)),
              numberArray(completions.map((c) => c.attempt)),
              textArray(completions.map((c) => c.status)),
              numberArray(completions.map((c) => c.retryDelayMs)),
              numberArray(completions.map((c) => c.responseStatus)),
              textArray(completions.map((c) => c.error)),
              textArray(completions.map((c) => c.reason)),
              textArray(completions.map((c) => c.responseBody)),
              numberArray(completions.map((c) => c.durationMs)),
              textArray(completions.map((c) => c.disableEndpoint)),
              audit
            ]).pipe(Effect.map((rows) => new Set(rows.map((row) => row.id)))),
        release: (workerId, releases) =>
          releases.length === 0
            ? Effect.void
            : sql.unsafe(RELEASE_SQL, [
              workerId,
              releases.map((r) => r.id),
              releases.map((r) => r.attempt),
              releases.map((r) => r.started)
            ]).pipe(Effect.asVoid),
        storeSecrets: (updates) =>
          updates.length === 0
            ? Effect.void
            : sql.unsafe(STORE_SECRETS_SQL, [
              updates.map((u) => u.id),
              updates.map((u) => u.secret),
              updates.map((u) => u.replaces)
            ]).pipe(Effect.asVoid),
        warmUp: (workerId, connections) =>
          Effect.forEach(
            Array.from({ length: connections }, () => workerId),
            (id) =>
              sql.unsafe(CLAIM_SQL, [id, 1, 0]).pipe(
                Effect.zipRight(sql.unsafe(COMPLETE_SQL, [id, [], [], [], [], [], [], [], [], [], [], false]))
              ),
            { concurrency: "unbounded", discard: true }
          ),
        nextDueInMs: sql.unsafe<{ in_ms: number | null }>(NEXT_DUE_SQL).pipe(
          Effect.map((rows) => rows[0]?.in_ms ?? null)
        )
      }
    })
  )
}

/**
 * How the claim and the result writes run: straight on the pool when there is one and no span
 * to record the statement under (the claim loop's, and every write while deliveries are not
 * traced); otherwise through @effect/sql, whose span for the statement is then the child of the
 * caller's. @effect/sql's machinery per statement (statement, span, fiber refs, connection
 * handling) cost the worker about a twentieth of its CPU at full load, measured by burn-down.
 */
const hotStatements = (sql: SqlClient.SqlClient, pool: Option.Option<Pg.Pool>) => {
  if (Option.isNone(pool)) return <A extends object>(text: string, params: ReadonlyArray<unknown>) => sql.unsafe<A>(text, params)
  const direct = <A extends object>(text: string, params: ReadonlyArray<unknown>) =>
    Effect.async<ReadonlyArray<A>, SqlError.SqlError>((resume) => {
      pool.value.query<A>(text, params as Array<unknown>, (cause, result) =>
        resume(cause ? Effect.fail(new SqlError.SqlError({ cause, message: "Failed to execute statement" })) : Effect.succeed(result.rows))
      )
    })
  return <A extends object>(text: string, params: ReadonlyArray<unknown>) =>
    Effect.flatMap(Effect.serviceOption(Tracer.ParentSpan), (parent) => Option.isSome(parent) ? sql.unsafe<A>(text, params) : direct<A>(text, params))
}

/** A row of webhook_claim_deliveries, once its columns are checked. */
interface ClaimRow {
  readonly id: string
  readonly user_id: string | null
  readonly endpoint_id: string | null
  readonly endpoint_enabled: boolean | null
  readonly url: string | null
  readonly secret: string | null
  readonly secret_from_row: boolean
  readonly previous_secret: string | null
  readonly event_type: string
  readonly payload: string
  readonly created_at_ms: number
  readonly attempt: number
  readonly max_attempts: number
  readonly traceparent: string | null
  readonly reclaimed: boolean
  readonly exhausted: boolean
}

const toClaimed = (row: ClaimRow): ClaimedDelivery => ({
  id: row.id,
  userId: row.user_id,
  endpointId: row.endpoint_id,
  endpointEnabled: row.endpoint_enabled,
  url: row.url,
  secret: row.secret,
  secretFromRow: row.secret_from_row,
  previousSecret: row.previous_secret,
  eventType: row.event_type,
  payload: row.payload,
  createdAtMs: row.created_at_ms,
  attempt: row.attempt,
  maxAttempts: row.max_attempts,
  traceparent: row.traceparent,
  reclaimed: row.reclaimed,
  exhausted: row.exhausted
})
