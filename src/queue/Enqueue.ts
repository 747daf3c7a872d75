import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { randomBytes } from "node:crypto"
import type { Keyring } from "../crypto/Keyring.js"
import { memoizeBounded } from "../lib/Memo.js"
import { nameableScheme } from "../lib/UrlScheme.js"

/** Where a delivery goes: a URL with its signing secret, or a registered endpoint. */
export type Destination =
  | { readonly url: string; readonly secret: string }
  | { readonly endpointId: string }

export interface EnqueueRequest {
  readonly destination: Destination
  readonly eventType: string
  /** Any JSON value; or `{ json: text }` to send pre-serialised JSON text as is. */
  readonly payload: unknown
  readonly userId?: string | undefined
  /** At most one delivery per (destination, key): a repeat returns the first delivery's id. */
  readonly idempotencyKey?: string | undefined
  readonly maxAttempts?: number | undefined
  /** Not before this time (a delay or an absolute time). */
  readonly deliverAfter?: Duration.DurationInput | Date | undefined
  /** W3C traceparent of the producer's span; the delivery spans link to it. */
  readonly traceparent?: string | undefined
}

export interface Enqueued {
  readonly id: string
  /** True when the idempotency key matched an existing delivery, whose id this is. */
  readonly duplicate: boolean
}

/** A request that cannot be queued; `field` names the culprit. */
export class InvalidEnqueueRequest extends Data.TaggedError("InvalidEnqueueRequest")<{
  readonly field: string
  readonly reason: string
}> {
  override get message() {
    return `${this.field}: ${this.reason}`
  }
}

export class EndpointNotFound extends Data.TaggedError("EndpointNotFound")<{ readonly endpointId: string }> {
  override get message() {
    return `endpoint ${this.endpointId} does not exist`
  }
}

export class EndpointIsDisabled extends Data.TaggedError("EndpointIsDisabled")<{
  readonly endpointId: string
  readonly reason: string | null
}> {
  override get message() {
    return `endpoint ${this.endpointId} is disabled${this.reason ? ` (${this.reason})` : ""}`
  }
}

export class EventTypeNotSubscribed extends Data.TaggedError("EventTypeNotSubscribed")<{
  readonly endpointId: string
  readonly eventType: string
  readonly subscribed: ReadonlyArray<string>
}> {
  override get message() {
    return `endpoint ${this.endpointId} does not subscribe to ${this.eventType} (it takes ${this.subscribed.join(", ")})`
  }
}

export type EnqueueError = InvalidEnqueueRequest | EndpointNotFound | EndpointIsDisabled | EventTypeNotSubscribed

// Random bits for ids, drawn from the system in blocks: one `randomBytes` per id cost more than
// the rest of an id (measured ~20 µs on a busy machine against ~1 µs per 16 bytes of a block).
const RANDOM_BLOCK = 4096
let random = Buffer.alloc(0)
let randomAt = RANDOM_BLOCK

/**
 * A UUIDv7: time-ordered, so new rows land at the right edge of the primary-key index instead of
 * on random pages.
 */
export const uuidv7 = (nowMs = Date.now()): string => {
  if (randomAt + 16 > random.length) {
    random = randomBytes(RANDOM_BLOCK)
    randomAt = 0
  }
  const bytes = Buffer.from(random.subarray(randomAt, randomAt + 16))
  randomAt += 16
  bytes.writeUIntBE(nowMs, 0, 6)
  bytes[6] = (bytes[6]! & 0x0f) | 0x70
  bytes[8] = (bytes[8]! & 0x3f) | 0x80
  const hex = bytes.toString("hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const invalid = (field: string, reason: string) => Either.left(new InvalidEnqueueRequest({ field, reason }))

/** The payload as JSON text. */
export const payloadText = (payload: unknown): Either.Either<string, InvalidEnqueueRequest> => {
  if (payload !== null && typeof payload === "object" && "json" in payload && Object.keys(payload).length === 1) {
    const text = (payload as { json: unknown }).json
    if (typeof text !== "string") return invalid("payload", "json must be a string of JSON text")
    try {
      JSON.parse(text)
    } catch (error) {
      return invalid("payload", `not valid JSON: ${(error as Error).message}`)
    }
    return Either.right(text)
  }
  let text: string | undefined
  try {
    text = JSON.stringify(payload)
  } catch (error) {
    return invalid("payload", `cannot be serialised as JSON: ${(error as Error).message}`)
  }
  return text === undefined ? invalid("payload", "must be a JSON value (got undefined)") : Either.right(text)
}

/** Checks a URL's form at enqueue time; whether its address may be reached is decided at delivery. */
export const validateUrl = memoizeBounded((raw: string): Either.Either<string, InvalidEnqueueRequest> => {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    // The text stays out of the message: a URL can hold a token, and messages reach logs.
    return invalid("url", "is not a valid URL (expected http:// or https:// and a host)")
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    const scheme = nameableScheme(raw, url)
    return invalid("url", scheme === undefined ? "scheme must be http or https" : `scheme must be http or https, got ${scheme}`)
  }
  return Either.right(raw)
}, 1000)

/** A secret is a `whsec_` base64 key (Standard Webhooks) or any other non-empty text, used as its bytes. */
export const validateSecret = (secret: string): Either.Either<string, InvalidEnqueueRequest> => {
  if (secret === "") return invalid("secret", "must not be empty")
  if (secret.startsWith("whsec_")) {
    const body = secret.slice(6)
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body) || Buffer.from(body, "base64").length < 1) {
      return invalid("secret", "a whsec_ secret must be whsec_ followed by base64")
    }
  }
  return Either.right(secret)
}

export interface Row {
  readonly id: string
  readonly userId: string | null
  readonly endpointId: string | null
  readonly url: string | null
  readonly secret: string | null
  readonly eventType: string
  readonly payload: string
  readonly maxAttempts: number
  readonly delayMs: number
  readonly notBefore: Date | null
  readonly idempotencyKey: string | null
  readonly traceparent: string | null
}

/** Validates a request and turns it into the row to insert (secret encrypted). */
export const toRow = (
  request: EnqueueRequest,
  /** Encrypts a URL destination's secret; endpoint destinations store none and need no key. */
  keyring: Keyring | undefined,
  defaultMaxAttempts: number
): Either.Either<Row, InvalidEnqueueRequest> =>
  Either.gen(function*() {
    if (typeof request.eventType !== "string" || !/^[^\s\u0000-\u001f]{1,200}$/.test(request.eventType)) {
      return yield* invalid("eventType", "must be 1 to 200 characters without spaces or control characters")
    }
    const payload = yield* payloadText(request.payload)
    const maxAttempts = request.maxAttempts ?? defaultMaxAttempts
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 1000) {
      return yield* invalid("maxAttempts", `must be an integer from 1 to 1000, got ${maxAttempts}`)
    }
    if (request.idempotencyKey !== undefined && (request.idempotencyKey === "" || request.idempotencyKey.length > 255)) {
      return yield* invalid("idempotencyKey", "must be 1 to 255 characters")
    }
    if (request.traceparent !== undefined && !/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/.test(request.traceparent)) {
      return yield* invalid("traceparent", "must be a W3C traceparent (00-<trace id>-<span id>-<flags>)")
    }
    let delayMs = 0
    let notBefore: Date | null = null
    if (request.deliverAfter instanceof Date) {
      if (Number.isNaN(request.deliverAfter.getTime())) return yield* invalid("deliverAfter", "is an invalid date")
      notBefore = request.deliverAfter
    } else if (request.deliverAfter !== undefined) {
      const duration = Duration.decodeUnknown(request.deliverAfter)
      if (Option.isNone(duration)) return yield* invalid("deliverAfter", "must be a duration or a Date")
      delayMs = Duration.toMillis(duration.value)
    }
    const base = {
      id: uuidv7(),
      userId: request.userId ?? null,
      eventType: request.eventType,
      payload,
      maxAttempts,
      delayMs,
      notBefore,
      idempotencyKey: request.idempotencyKey ?? null,
      traceparent: request.traceparent ?? null
    }
    const destination = request.destination
    if ("endpointId" in destination) {
      if (!UUID.test(destination.endpointId)) return yield* invalid("endpoint", `"${destination.endpointId}" is not an endpoint id (a UUID)`)
      return { ...base, endpointId: destination.endpointId, url: null, secret: null }
    }
    const url = yield* validateUrl(destination.url)
    const secret = yield* validateSecret(destination.secret)
    if (keyring === undefined) return yield* invalid("secret", "cannot be stored: no encryption key (WEBHOOK_SECRET_ENCRYPTION_KEY) is set")
    return { ...base, endpointId: null, url, secret: keyring.encrypt(secret) }
  })

// Result columns are single lowercase words, which read the same under snake_case/camelCase
// renaming, so a statement runner with result-name transforms still finds them.
// A PL/pgSQL function (migrations/0003_claim_functions.sql): its plan is kept per session.
const INSERT_SQL = "SELECT webhook_enqueue_deliveries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) AS id"

const EXISTING_SQL = `
SELECT COALESCE(partner_webhook_id::text, url) AS destination, idempotency_key AS ikey, id::text AS id
FROM webhook_delivery_queue
WHERE (COALESCE(partner_webhook_id::text, url), idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))`

const ENDPOINTS_SQL = `
SELECT id::text AS id, enabled, disabled_reason AS reason, event_types AS subscribed
FROM partner_webhooks WHERE id = ANY($1::uuid[])`

/** The INSERT's parameters: one array per column, in `INSERT_SQL`'s order. */
const insertParams = (rows: ReadonlyArray<Row>): ReadonlyArray<ReadonlyArray<unknown>> => [
  rows.map((r) => r.id),
  rows.map((r) => r.userId),
  rows.map((r) => r.endpointId),
  rows.map((r) => r.url),
  rows.map((r) => r.secret),
  rows.map((r) => r.eventType),
  rows.map((r) => r.payload),
  rows.map((r) => r.maxAttempts),
  rows.map((r) => r.delayMs),
  rows.map((r) => r.notBefore),
  rows.map((r) => r.idempotencyKey),
  rows.map((r) => r.traceparent)
]

/**
 * Runs one statement with positional parameters and returns its rows. The Effect path runs it
 * with `sql.unsafe` on the SqlClient in scope; the Promise API with `query` on a `pg` client.
 * Either way it is the caller's connection, so the rows join the caller's transaction.
 */
export type RunStatement<E> = <A extends object>(text: string, params: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<A>, E>

/**
 * Inserts validated rows with one statement, through `run`. Endpoint rows are checked against
 * their endpoint first: it must exist, be enabled, and subscribe to the event type. Those checks
 * are reads, so a typed failure leaves the caller's transaction usable.
 */
export const insertRowsWith = <E>(run: RunStatement<E>) =>
(rows: ReadonlyArray<Row>): Effect.Effect<ReadonlyArray<Enqueued>, EnqueueError | E> =>
  Effect.gen(function*() {
    if (rows.length === 0) return [] as ReadonlyArray<Enqueued>
    const endpointIds = [...new Set(rows.flatMap((row) => (row.endpointId === null ? [] : [row.endpointId])))]
    if (endpointIds.length > 0) {
      const endpoints = yield* run<{ id: string; enabled: boolean; reason: string | null; subscribed: ReadonlyArray<string> | null }>(
        ENDPOINTS_SQL,
        [endpointIds]
      )
      const byId = new Map(endpoints.map((endpoint) => [endpoint.id, endpoint]))
      for (const row of rows) {
        if (row.endpointId === null) continue
        const endpoint = byId.get(row.endpointId)
        if (endpoint === undefined) return yield* new EndpointNotFound({ endpointId: row.endpointId })
        if (!endpoint.enabled) return yield* new EndpointIsDisabled({ endpointId: row.endpointId, reason: endpoint.reason })
        if (endpoint.subscribed !== null && !endpoint.subscribed.includes(row.eventType)) {
          return yield* new EventTypeNotSubscribed({ endpointId: row.endpointId, eventType: row.eventType, subscribed: endpoint.subscribed })
        }
      }
    }
    const inserted = yield* run<{ id: string }>(INSERT_SQL, insertParams(rows))
    const insertedIds = new Set(inserted.map((row) => row.id))
    const destinationOf = (row: Row) => row.endpointId ?? row.url ?? ""
    const duplicates = rows.filter((row) => !insertedIds.has(row.id) && row.idempotencyKey !== null)
    const existing = new Map<string, string>()
    if (duplicates.length > 0) {
      const found = yield* run<{ destination: string; ikey: string; id: string }>(EXISTING_SQL, [
        duplicates.map(destinationOf),
        duplicates.map((row) => row.idempotencyKey)
      ])
      for (const row of found) existing.set(`${row.destination}\u0000${row.ikey}`, row.id)
    }
    // Two requests in one batch may share a key: the second is a duplicate of the first.
    const firstOfKey = new Map<string, string>()
    return rows.map((row): Enqueued => {
      if (insertedIds.has(row.id)) {
        if (row.idempotencyKey !== null) firstOfKey.set(`${destinationOf(row)}\u0000${row.idempotencyKey}`, row.id)
        return { id: row.id, duplicate: false }
      }
      const key = `${destinationOf(row)}\u0000${row.idempotencyKey}`
      return { id: existing.get(key) ?? firstOfKey.get(key) ?? row.id, duplicate: true }
    })
  })

/**
 * Inserts validated rows on whatever SqlClient is in scope, so inside the caller's transaction
 * when there is one. Result-name transforms of that client are bypassed (see the SQL above).
 */
export const insertRows = (rows: ReadonlyArray<Row>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => insertRowsOn(sql)(rows))

/** `insertRows` on a given SqlClient (one captured when a layer was built). */
export const insertRowsOn = (sql: SqlClient.SqlClient) => {
  const raw = sql.withoutTransforms()
  return insertRowsWith<SqlError.SqlError>((text, params) => raw.unsafe(text, params))
}

export type InsertError = EnqueueError | SqlError.SqlError
