import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { type Keyring, storedKeyId } from "./Keyring.js"

/**
 * `webhook-worker rotate-key`: re-encrypts every stored secret under the current key
 * (WEBHOOK_SECRET_ENCRYPTION_KEY), reading the old ones with WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS.
 *
 * - Batches of committed compare-and-swap updates: a crash loses nothing, and a re-run continues
 *   where the crash left off (rows already under the current key are not selected again).
 * - Safe beside running workers: rows are locked with SKIP LOCKED, so a row a worker is updating
 *   at that moment is left and retried; an update only lands if the stored value is still the one
 *   that was read, so a worker re-encrypting the same row (it does, for rows it touches) or an
 *   operator rotating an endpoint's secret is never overwritten with stale data.
 * - A secret no configured key can decrypt is reported and left exactly as it is.
 * - Plaintext secrets (a producer's raw SQL insert) are encrypted too.
 *
 * The "updatedAt" columns are left alone: re-encrypting changes nothing an operator would call
 * an update, and the queue's "updatedAt" dates dead letters (`dlq list`, `dlq retry --since`).
 */

export type SecretTable = "partner_webhooks" | "webhook_delivery_queue"
export type SecretColumn = "secret" | "previous_secret"

interface Target {
  readonly table: SecretTable
  readonly columns: ReadonlyArray<SecretColumn>
}

// Endpoints first: few rows, and every endpoint delivery depends on them.
const TARGETS: ReadonlyArray<Target> = [
  { table: "partner_webhooks", columns: ["secret", "previous_secret"] },
  { table: "webhook_delivery_queue", columns: ["secret"] }
]

export interface UndecryptableSecret {
  readonly table: SecretTable
  readonly id: string
  readonly column: SecretColumn
  readonly reason: string
}

export interface RotationProgress {
  /** Rows dealt with so far: re-encrypted, or found undecryptable. */
  readonly done: number
  /** Rows that needed work when the run started (grows if more turn up meanwhile). */
  readonly total: number
}

export interface RotationReport {
  readonly currentKeyId: string
  /** Rows whose secrets were re-encrypted, per table. */
  readonly reencrypted: { readonly endpoints: number; readonly deliveries: number }
  /** Secrets that no configured key decrypts (left untouched); at most `reportLimit` listed. */
  readonly undecryptable: ReadonlyArray<UndecryptableSecret>
  readonly undecryptableCount: number
  /** Decryptable rows still not under the current key at the end (kept busy by others); run again. */
  readonly remaining: number
}

export interface RotationOptions<E> {
  readonly batchSize?: number
  readonly onProgress?: (progress: RotationProgress) => Effect.Effect<void, E>
  /** How many undecryptable secrets to list in the report (all are counted). */
  readonly reportLimit?: number
}

/** The stored value is one this run should rewrite: set, non-empty, and not under the current key. */
const stale = (column: SecretColumn) => `(${column} IS NOT NULL AND ${column} <> '' AND ${column} NOT LIKE $1)`

// Encrypted under a key the keyring does not hold ($2: the previous key ids): undecryptable.
const foreign = (column: SecretColumn) =>
  `(${stale(column)} AND ${column} LIKE 'enc:v1:%' AND NOT substr(${column}, 8, 8) = ANY($2::text[]))`

const currentPattern = (keyring: Keyring) => `enc:v1:${keyring.currentId}:%`

/** How many rows hold a secret not under the current key (what a run would go through). */
export const countStale = (keyring: Keyring) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    let total = 0
    for (const target of TARGETS) {
      const [row] = yield* sql.unsafe<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${target.table} WHERE ${target.columns.map(stale).join(" OR ")}`,
        [currentPattern(keyring)]
      )
      total += row?.n ?? 0
    }
    return total
  })

type Row = { readonly id: string } & Partial<Record<SecretColumn, string | null>>

interface BatchResult {
  readonly updated: number
  /** Rows that still need work but were locked or changed under us. */
  readonly busy: ReadonlyArray<string>
  readonly undecryptable: ReadonlyArray<UndecryptableSecret & { readonly damaged: boolean }>
}

/**
 * Compare-and-swap update of one batch. The CTE locks only rows nobody else holds and whose
 * values are still the ones read; the UPDATE repeats the comparison so a row changed between
 * snapshot and lock is re-checked on its newest version.
 */
const updateSql = (target: Target) => {
  const cols = target.columns
  const types = ["$1::uuid[]", ...cols.flatMap((_, i) => [`$${2 + 2 * i}::text[]`, `$${3 + 2 * i}::text[]`])]
  const names = ["id", ...cols.flatMap((c) => [`old_${c}`, `new_${c}`])]
  const same = cols.map((c) => `t.${c} IS NOT DISTINCT FROM r.old_${c}`).join(" AND ")
  return `
WITH r AS (
  SELECT * FROM unnest(${types.join(", ")}) AS r(${names.join(", ")})
), locked AS (
  SELECT t.id FROM ${target.table} t JOIN r ON r.id = t.id
  WHERE ${same}
  FOR UPDATE OF t SKIP LOCKED
)
UPDATE ${target.table} t
SET ${cols.map((c) => `${c} = COALESCE(r.new_${c}, t.${c})`).join(", ")}
FROM r, locked
WHERE t.id = r.id AND locked.id = r.id AND ${same}
RETURNING t.id::text AS id`
}

const rewriteBatch = (target: Target, rows: ReadonlyArray<Row>, keyring: Keyring) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const undecryptable: Array<UndecryptableSecret & { readonly damaged: boolean }> = []
    const known = new Set(keyring.knownKeyIds())
    const changes: Array<{ id: string; values: Array<{ old: string | null; next: string | null }> }> = []
    for (const row of rows) {
      let any = false
      const values = target.columns.map((column) => {
        const old = row[column] ?? null
        if (old === null || old === "" || !keyring.needsEncryption(old)) return { old, next: null }
        const plaintext = keyring.decrypt(old)
        if (Either.isLeft(plaintext)) {
          // Under a key we hold yet failing: the value itself is damaged (not merely a missing key).
          const damaged = Option.exists(storedKeyId(old), (id) => known.has(id))
          undecryptable.push({ table: target.table, id: row.id, column, reason: plaintext.left.reason, damaged })
          return { old, next: null }
        }
        any = true
        return { old, next: keyring.encrypt(plaintext.right) }
      })
      if (any) changes.push({ id: row.id, values })
    }
    if (changes.length === 0) return { updated: 0, busy: [], undecryptable } satisfies BatchResult
    const params: Array<ReadonlyArray<string | null>> = [changes.map((c) => c.id)]
    target.columns.forEach((_, i) => {
      params.push(changes.map((c) => c.values[i]!.old))
      params.push(changes.map((c) => c.values[i]!.next))
    })
    const done = yield* sql.unsafe<{ id: string }>(updateSql(target), params)
    const updated = new Set(done.map((row) => row.id))
    return {
      updated: updated.size,
      busy: changes.filter((c) => !updated.has(c.id)).map((c) => c.id),
      undecryptable
    } satisfies BatchResult
  })

const BUSY_RETRY_ROUNDS = 20
const BUSY_RETRY_PAUSE = Duration.millis(250)
// Full passes: the first does the work; later ones pick up rows written under an old key while
// the run was under way (by a process still on the old configuration).
const MAX_PASSES = 3

/** Re-encrypts every stored secret under the current key. See the module comment. */
export const rotateKey = <E = never>(keyring: Keyring, options: RotationOptions<E> = {}) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const batchSize = options.batchSize ?? 500
    const reportLimit = options.reportLimit ?? 100
    const pattern = currentPattern(keyring)
    const previousIds = keyring.knownKeyIds().filter((id) => id !== keyring.currentId)
    // Listed in the report (the first `reportLimit` found); all are counted at the end, by SQL.
    const listed = new Map<string, UndecryptableSecret>()
    // Values under a key we hold that still fail to decrypt (damaged): rare, so kept by id to
    // keep them out of the "remaining" count.
    const damaged = new Map<SecretTable, Set<string>>(TARGETS.map((t) => [t.table, new Set<string>()]))
    const damagedValues = new Set<string>()
    const reencrypted = { endpoints: 0, deliveries: 0 }
    let total = yield* countStale(keyring)
    let done = 0
    let firstPass = true

    const report = (n: number) =>
      Effect.suspend(() => {
        done += n
        if (done > total) total = done
        return options.onProgress && n > 0 ? options.onProgress({ done, total }) : Effect.void
      })

    const absorb = (target: Target, result: BatchResult) => {
      if (target.table === "partner_webhooks") reencrypted.endpoints += result.updated
      else reencrypted.deliveries += result.updated
      const rows = new Set<string>()
      for (const entry of result.undecryptable) {
        rows.add(entry.id)
        const key = `${entry.table}/${entry.id}/${entry.column}`
        if (listed.size < reportLimit && !listed.has(key)) {
          listed.set(key, { table: entry.table, id: entry.id, column: entry.column, reason: entry.reason })
        }
        if (entry.damaged) {
          damaged.get(entry.table)!.add(entry.id)
          damagedValues.add(key)
        }
      }
      // Undecryptable rows count as dealt with once, in the first pass.
      return result.updated + (firstPass ? rows.size : 0)
    }

    const selectColumns = (target: Target) => ["id::text AS id", ...target.columns].join(", ")
    const anyStale = (target: Target) => target.columns.map(stale).join(" OR ")

    // One keyset pass over a table in primary-key order: each batch starts after the last id seen,
    // so the pass reads the table once however many rows it leaves (undecryptable, busy).
    const pass = (target: Target) =>
      Effect.gen(function*() {
        const busy: Array<string> = []
        let after: string | null = null
        while (true) {
          const rows: ReadonlyArray<Row> = yield* sql.unsafe<Row>(
            `SELECT ${selectColumns(target)} FROM ${target.table}
             WHERE ($2::uuid IS NULL OR id > $2::uuid) AND (${anyStale(target)})
             ORDER BY id LIMIT $3`,
            [pattern, after, batchSize]
          )
          if (rows.length === 0) return busy
          const result = yield* rewriteBatch(target, rows, keyring)
          busy.push(...result.busy)
          yield* report(absorb(target, result))
          after = rows[rows.length - 1]!.id
          if (rows.length < batchSize) return busy
        }
      })

    // Rows that were locked (a worker's claim or completion statement) get a few more tries.
    const retryBusy = (target: Target, ids: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        let left = ids
        for (let round = 0; round < BUSY_RETRY_ROUNDS && left.length > 0; round++) {
          yield* Effect.sleep(BUSY_RETRY_PAUSE)
          const next: Array<string> = []
          for (let i = 0; i < left.length; i += batchSize) {
            const rows = yield* sql.unsafe<Row>(
              `SELECT ${selectColumns(target)} FROM ${target.table}
               WHERE id = ANY($2::uuid[]) AND (${anyStale(target)})`,
              [pattern, left.slice(i, i + batchSize)]
            )
            const result = yield* rewriteBatch(target, rows, keyring)
            next.push(...result.busy)
            yield* report(absorb(target, result))
          }
          left = next
        }
      })

    // Rows this run could still convert: stale, not under a foreign key, not known damaged.
    const remainingCount = Effect.gen(function*() {
      let remaining = 0
      for (const target of TARGETS) {
        const convertible = target.columns
          .map((c) => `(${stale(c)} AND NOT ${foreign(c)})`)
          .join(" OR ")
        const [row] = yield* sql.unsafe<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${target.table}
           WHERE (${convertible}) AND NOT (id = ANY($3::uuid[]))`,
          [pattern, previousIds, [...damaged.get(target.table)!]]
        )
        remaining += row?.n ?? 0
      }
      return remaining
    })

    // Undecryptable secrets left at the end: under a key not configured, or damaged.
    const undecryptableCount = Effect.gen(function*() {
      let count = 0
      for (const target of TARGETS) {
        const sums = target.columns.map((c) => `count(*) FILTER (WHERE ${foreign(c)})`).join(" + ")
        const [row] = yield* sql.unsafe<{ n: number }>(
          `SELECT (${sums})::int AS n FROM ${target.table}`,
          [pattern, previousIds]
        )
        count += row?.n ?? 0
      }
      return count + damagedValues.size
    })

    let remaining = 0
    for (let passes = 0; passes < MAX_PASSES; passes++) {
      for (const target of TARGETS) {
        const busy = yield* pass(target)
        if (busy.length > 0) yield* retryBusy(target, busy)
      }
      firstPass = false
      remaining = yield* remainingCount
      if (remaining === 0) break
    }

    return {
      currentKeyId: keyring.currentId,
      reencrypted,
      undecryptable: [...listed.values()],
      undecryptableCount: yield* undecryptableCount,
      remaining
    } satisfies RotationReport
  })

export type RotationError = SqlError.SqlError
