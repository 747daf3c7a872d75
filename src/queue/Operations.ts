import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

/** One row of get_webhook_queue_stats(). */
export interface StatusStats {
  readonly status: string
  readonly count: number
  readonly oldest_pending: Date | null
  readonly avg_attempts: number | null
}

export const queueStats = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ status: string; count: string; oldest_pending: Date | null; avg_attempts: string | null }>`
    SELECT status, count, oldest_pending, avg_attempts FROM get_webhook_queue_stats()`
  return rows.map((row): StatusStats => ({
    status: row.status,
    count: Number(row.count),
    oldest_pending: row.oldest_pending,
    avg_attempts: row.avg_attempts === null ? null : Number(row.avg_attempts)
  }))
})

export interface DeadLetter {
  readonly id: string
  readonly event_type: string
  readonly user_id: string | null
  readonly endpoint_id: string | null
  readonly destination: string | null
  readonly attempt_count: number
  readonly max_attempts: number
  readonly last_response_status: number | null
  readonly last_error: string | null
  readonly created_at: Date
  readonly dead_lettered_at: Date
}

/** Dead letters, newest first. */
export const listDeadLetters = (limit: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<DeadLetter>`
      SELECT q.id::text AS id, q.event_type, q."userId" AS user_id, q.partner_webhook_id::text AS endpoint_id,
             COALESCE(p.url, q.url) AS destination, q.attempt_count, q.max_attempts, q.last_response_status,
             q.last_error, q."createdAt" AS created_at, q."updatedAt" AS dead_lettered_at
      FROM webhook_delivery_queue q
      LEFT JOIN partner_webhooks p ON p.id = q.partner_webhook_id
      WHERE q.status = 'dead_letter'
      ORDER BY q."updatedAt" DESC
      LIMIT ${limit}`)

// A fresh attempt budget: attempt_count back to 0, due now. The NOTIFY trigger wakes workers.
const REQUEUE_SET = `status = 'pending', attempt_count = 0, next_retry_at = now(), locked_by = NULL,
      locked_until = NULL, "updatedAt" = now()`

/** Puts the given dead letters back to pending. Returns the ids requeued (others were not dead letters). */
export const retryDeadLetters = (ids: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ id: string }>(
      `UPDATE webhook_delivery_queue SET ${REQUEUE_SET}
       WHERE id = ANY($1::uuid[]) AND status = 'dead_letter' RETURNING id::text AS id`,
      [ids]
    ).pipe(Effect.map((rows) => rows.map((row) => row.id))))

export interface DeadLetterFilter {
  readonly eventType?: string | undefined
  readonly since?: Date | undefined
  readonly endpointId?: string | undefined
}

/** Progress of a batched operation: how many rows it expects, then how many it has done. */
export interface BatchProgress<E> {
  readonly onStart?: (total: number) => Effect.Effect<void, E>
  readonly onProgress?: (done: number) => Effect.Effect<void, E>
}

const RETRY_FILTER = `status = 'dead_letter'
  AND "updatedAt" <= $1
  AND ($2::text IS NULL OR event_type = $2)
  AND ($3::timestamptz IS NULL OR "updatedAt" >= $3)
  AND ($4::uuid IS NULL OR partner_webhook_id = $4)`

/**
 * Requeues every dead letter matching the filter, in committed batches: safe beside running
 * workers, and a crash midway loses nothing (run it again to continue). Only rows dead-lettered
 * at or before the run's start are taken: a requeued row that dies again meanwhile (its
 * "updatedAt" is then later) is not requeued a second time by the same run, so it ends.
 */
export const retryAllDeadLetters = <E = never>(
  filter: DeadLetterFilter,
  progress: BatchProgress<E> = {},
  batchSize = 1000
) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // The database's clock, the one "updatedAt" is written with.
    const [start] = yield* sql<{ cutoff: Date }>`SELECT now() AS cutoff`
    const cutoff = start!.cutoff
    const params = [cutoff, filter.eventType ?? null, filter.since ?? null, filter.endpointId ?? null]
    if (progress.onStart) {
      const [expected] = yield* sql.unsafe<{ n: number }>(`SELECT count(*)::int AS n FROM webhook_delivery_queue WHERE ${RETRY_FILTER}`, params)
      yield* progress.onStart(expected?.n ?? 0)
    }
    let requeued = 0
    while (true) {
      const rows = yield* sql.unsafe<{ id: string }>(
        `UPDATE webhook_delivery_queue SET ${REQUEUE_SET}
         WHERE id IN (
           SELECT id FROM webhook_delivery_queue
           WHERE ${RETRY_FILTER}
           ORDER BY "updatedAt"
           LIMIT $5
           FOR UPDATE SKIP LOCKED)
         RETURNING id::text AS id`,
        [...params, batchSize]
      )
      requeued += rows.length
      if (progress.onProgress) yield* progress.onProgress(requeued)
      // Stop on an empty batch, not a short one: rows skipped while locked may still be there.
      if (rows.length === 0) return { requeued, cutoff }
    }
  })

// == archive and cleanup (ops: `dlq archive`, `cleanup`)

// One statement per batch: the rows leave the queue and enter the archive together, so a crash
// between batches loses nothing and a re-run continues. SKIP LOCKED: a dead letter being requeued
// by `dlq retry` at this moment is left to it.
const ARCHIVE_SQL = `
WITH batch AS (
  SELECT id FROM webhook_delivery_queue
  WHERE status = 'dead_letter' AND "updatedAt" < $1
  ORDER BY "updatedAt"
  LIMIT $2
  FOR UPDATE SKIP LOCKED
), moved AS (
  DELETE FROM webhook_delivery_queue q USING batch
  WHERE q.id = batch.id AND q.status = 'dead_letter'
  RETURNING q.id, q."userId", q.partner_webhook_id, q.url, q.event_type, q.payload, q.attempt_count,
            q.max_attempts, q.last_response_status, q.last_error, q.idempotency_key, q.traceparent,
            q."createdAt", q."updatedAt"
), archived AS (
  INSERT INTO webhook_dead_letter_archive
    (id, "userId", partner_webhook_id, url, event_type, payload, attempt_count, max_attempts,
     last_response_status, last_error, idempotency_key, traceparent, "createdAt", dead_lettered_at)
  SELECT * FROM moved
  -- A delivery archived before, requeued by hand and dead again: keep its latest state.
  ON CONFLICT (id) DO UPDATE SET
    attempt_count = EXCLUDED.attempt_count, last_response_status = EXCLUDED.last_response_status,
    last_error = EXCLUDED.last_error, dead_lettered_at = EXCLUDED.dead_lettered_at, archived_at = now()
)
SELECT count(*)::int AS n FROM moved`

/**
 * Runs `batchSql` ($1 the cutoff, $2 the batch size; returns the rows it handled as `n`), each
 * call its own short transaction, until a batch comes back empty. The cutoff, `now()` minus
 * `olderThanDays`, is fixed when the run starts, so it ends however many rows age past it
 * meanwhile; `countSql` ($1 the cutoff) says how many the run expects, for `onStart`.
 */
const inBatches = <E>(countSql: string, batchSql: string, olderThanDays: number, progress: BatchProgress<E>, batchSize: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [start] = yield* sql<{ cutoff: Date }>`SELECT now() - make_interval(days => ${olderThanDays}) AS cutoff`
    const cutoff = start!.cutoff
    const [expected] = yield* sql.unsafe<{ total: number }>(countSql, [cutoff])
    if (progress.onStart) yield* progress.onStart(expected?.total ?? 0)
    let done = 0
    while (true) {
      const [batch] = yield* sql.unsafe<{ n: number }>(batchSql, [cutoff, batchSize])
      const count = batch?.n ?? 0
      done += count
      if (progress.onProgress) yield* progress.onProgress(done)
      // Stop on an empty batch, not a short one: rows skipped while locked may still be there.
      if (count === 0) return { done, cutoff }
    }
  })

/**
 * Moves dead letters dead-lettered more than `olderThanDays` ago into webhook_dead_letter_archive,
 * in committed batches. `onStart` gets how many rows the run expects to move.
 */
export const archiveDeadLetters = <E = never>(
  olderThanDays: number,
  progress: BatchProgress<E> = {},
  batchSize = 1000
) =>
  inBatches(
    `SELECT count(*)::int AS total FROM webhook_delivery_queue WHERE status = 'dead_letter' AND "updatedAt" < $1`,
    ARCHIVE_SQL,
    olderThanDays,
    progress,
    batchSize
  ).pipe(Effect.map(({ cutoff, done }) => ({ archived: done, cutoff })))

// One statement per batch, so each batch is its own short transaction: the same rows as the
// deployment guide's cleanup_delivered_webhooks(days) (delivered before the cutoff, with their
// log rows), but a large backlog does not become one long DELETE holding locks and WAL.
const CLEANUP_SQL = `
WITH batch AS (
  SELECT id FROM webhook_delivery_queue
  WHERE status = 'delivered' AND delivered_at < $1
  ORDER BY delivered_at
  LIMIT $2
  FOR UPDATE SKIP LOCKED
), gone AS (
  DELETE FROM webhook_delivery_queue q USING batch
  WHERE q.id = batch.id AND q.status = 'delivered'
  RETURNING q.id
), logs AS (
  DELETE FROM webhook_delivery_log l USING gone WHERE l.delivery_id = gone.id
)
SELECT count(*)::int AS n FROM gone`

/**
 * Deletes delivered rows delivered more than `olderThanDays` ago, and their webhook_delivery_log
 * rows, in committed batches (`cleanup`). A crash between batches loses nothing a re-run would
 * not remove anyway.
 */
export const cleanupDelivered = <E = never>(
  olderThanDays: number,
  progress: BatchProgress<E> = {},
  batchSize = 1000
) =>
  inBatches(
    `SELECT count(*)::int AS total FROM webhook_delivery_queue WHERE status = 'delivered' AND delivered_at < $1`,
    CLEANUP_SQL,
    olderThanDays,
    progress,
    batchSize
  ).pipe(Effect.map(({ cutoff, done }) => ({ removed: done, cutoff })))
