import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type { Keyring } from "../crypto/Keyring.js"
import { generateSecret } from "../signing/Signer.js"
import { EndpointNotFound, validateUrl } from "./Enqueue.js"

export { EndpointNotFound }

/**
 * Registered partner endpoints (partner_webhooks): what `webhook-worker endpoints …` does.
 * Secrets are stored encrypted and never read back out of this module in plaintext; the only
 * time a secret is handed to the caller is when it is created (add, rotate-secret).
 */

/** An endpoint request that cannot be stored; `field` names the culprit. */
export class InvalidEndpoint extends Data.TaggedError("InvalidEndpoint")<{
  readonly field: "url" | "secret" | "eventTypes" | "userId" | "id" | "grace"
  readonly reason: string
}> {
  override get message() {
    return `${this.field}: ${this.reason}`
  }
}

/** An endpoint as listed: everything but its secrets. */
export interface EndpointInfo {
  readonly id: string
  readonly url: string
  readonly user_id: string | null
  /** null: every event type. */
  readonly event_types: ReadonlyArray<string> | null
  readonly enabled: boolean
  readonly disabled_reason: string | null
  readonly disabled_at: Date | null
  /** While a secret rotation's grace window lasts, the old secret signs too until this time. */
  readonly previous_secret_until: Date | null
  readonly created_at: Date
  readonly updated_at: Date
}

// Keep in step with toRow's event-type rule (Enqueue.ts); a comma separates the list here.
const EVENT_TYPE = /^[^\s,\u0000-\u001f]{1,200}$/

/** Parses `a,b,c` into distinct event types. */
export const parseEventTypes = (raw: string): Either.Either<ReadonlyArray<string>, InvalidEndpoint> => {
  const types = raw.split(",").map((type) => type.trim())
  const bad = types.find((type) => !EVENT_TYPE.test(type))
  if (bad !== undefined) {
    return Either.left(
      new InvalidEndpoint({
        field: "eventTypes",
        reason: bad === ""
          ? "expected a comma-separated list of event types, got an empty one"
          : `"${bad.slice(0, 60)}" is not an event type (1 to 200 characters, no spaces)`
      })
    )
  }
  return Either.right([...new Set(types)])
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** An endpoint id must be a UUID; checked before any query so a typo is a usage error. */
export const validateEndpointId = (id: string): Either.Either<string, InvalidEndpoint> =>
  UUID.test(id)
    ? Either.right(id.toLowerCase())
    : Either.left(new InvalidEndpoint({ field: "id", reason: `"${id.slice(0, 60)}" is not an endpoint id (a UUID)` }))

/** The listed columns of `partner_webhooks` under alias `t` (never the secrets). */
const selectInfo = (t: string) => `
  ${t}.id::text AS id, ${t}.url, ${t}."userId" AS user_id, ${t}.event_types, ${t}.enabled, ${t}.disabled_reason,
  ${t}.disabled_at,
  CASE WHEN ${t}.previous_secret IS NOT NULL AND ${t}.previous_secret_expires_at > now()
       THEN ${t}.previous_secret_expires_at END AS previous_secret_until,
  ${t}."createdAt" AS created_at, ${t}."updatedAt" AS updated_at`

export interface NewEndpoint {
  readonly url: string
  readonly userId?: string | undefined
  readonly eventTypes?: ReadonlyArray<string> | undefined
  /** `whsec_<base64 of 24 to 64 bytes>`; generated (whsec_ + 32 random bytes) when absent. */
  readonly secret?: string | undefined
}

/** Bytes of a generated endpoint secret: a full HMAC-SHA256 key (Standard Webhooks allows 24 to 64). */
export const GENERATED_SECRET_BYTES = 32

/** The key sizes Standard Webhooks allows for a `whsec_` secret. */
export const MIN_SECRET_BYTES = 24
export const MAX_SECRET_BYTES = 64

/**
 * An endpoint's signing secret as Standard Webhooks defines it: `whsec_` and the base64 of 24 to
 * 64 bytes. Stricter than a one-off `enqueue --secret` (any text): a registered endpoint's
 * secret is handed to a partner, whose Standard Webhooks library expects this form, and a short
 * key makes the signature guessable.
 */
export const validateEndpointSecret = (secret: string): Either.Either<string, InvalidEndpoint> => {
  const expected = `expected whsec_ followed by the base64 of ${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} random bytes (Standard Webhooks)`
  const fail = (got: string) => Either.left(new InvalidEndpoint({ field: "secret", reason: `${expected}, got ${got}` }))
  if (!secret.startsWith("whsec_")) return fail("a secret without the whsec_ prefix")
  const body = secret.slice("whsec_".length)
  const bytes = Buffer.from(body, "base64")
  // Node's decoder skips what is not base64; the re-encoding (padded, or not) shows it read it all.
  const canonical = bytes.toString("base64")
  if (body !== canonical && body !== canonical.replace(/=+$/, "")) return fail("characters or padding outside base64")
  if (bytes.length < MIN_SECRET_BYTES || bytes.length > MAX_SECRET_BYTES) return fail(`${bytes.length} bytes`)
  return Either.right(secret)
}

/** Registers an endpoint. Returns it with its plaintext secret, which is not retrievable afterwards. */
export const addEndpoint = (request: NewEndpoint, keyring: Keyring) =>
  Effect.gen(function*() {
    const url = yield* Either.mapLeft(validateUrl(request.url), (e) => new InvalidEndpoint({ field: "url", reason: e.reason }))
    const secret = request.secret === undefined
      ? generateSecret(GENERATED_SECRET_BYTES)
      : yield* validateEndpointSecret(request.secret)
    if (request.userId !== undefined && (request.userId === "" || request.userId.length > 255)) {
      return yield* new InvalidEndpoint({ field: "userId", reason: "must be 1 to 255 characters" })
    }
    if (request.eventTypes !== undefined && request.eventTypes.length === 0) {
      return yield* new InvalidEndpoint({ field: "eventTypes", reason: "must name at least one event type (omit it for all)" })
    }
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql.unsafe<EndpointInfo>(
      `INSERT INTO partner_webhooks AS p (url, "userId", event_types, secret)
       VALUES ($1, $2, $3::text[], $4)
       RETURNING ${selectInfo("p")}`,
      [url, request.userId ?? null, request.eventTypes ?? null, keyring.encrypt(secret)]
    )
    return { endpoint: rows[0]!, secret }
  })

/** Every endpoint, oldest first. */
export const listEndpoints = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.unsafe<EndpointInfo>(`SELECT ${selectInfo("p")} FROM partner_webhooks p ORDER BY p."createdAt", p.id`))

export interface EnabledChange {
  readonly endpoint: EndpointInfo
  /** False when the endpoint was already in the requested state (nothing written). */
  readonly changed: boolean
  /** Deliveries still queued for it (pending, failed or processing). */
  readonly queued: number
  readonly deadLetters: number
}

/**
 * Enables or disables an endpoint. While disabled, the worker dead-letters its deliveries as
 * they fall due (reason "endpoint_disabled"); after enabling, `dlq retry --all --endpoint ID`
 * brings them back. Only the columns a 410 also writes are touched, so the worker's role may run it.
 */
export const setEndpointEnabled = (id: string, enabled: boolean, reason: string | null) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(Effect.gen(function*() {
      const before = yield* sql<{ enabled: boolean }>`SELECT enabled FROM partner_webhooks WHERE id = ${id} FOR UPDATE`
      if (before.length === 0) return yield* new EndpointNotFound({ endpointId: id })
      const changed = before[0]!.enabled !== enabled
      if (changed) {
        yield* sql`
          UPDATE partner_webhooks
          SET enabled = ${enabled},
              disabled_reason = ${enabled ? null : reason ?? "disabled by an operator"},
              disabled_at = CASE WHEN ${enabled} THEN NULL ELSE now() END,
              "updatedAt" = now()
          WHERE id = ${id}`
      }
      const [endpoint] = yield* sql.unsafe<EndpointInfo>(`SELECT ${selectInfo("p")} FROM partner_webhooks p WHERE p.id = $1`, [id])
      const [counts] = yield* sql<{ queued: number; dead_letters: number }>`
        SELECT count(*) FILTER (WHERE status IN ('pending', 'failed', 'processing'))::int AS queued,
               count(*) FILTER (WHERE status = 'dead_letter')::int AS dead_letters
        FROM webhook_delivery_queue WHERE partner_webhook_id = ${id}`
      return { endpoint: endpoint!, changed, queued: counts!.queued, deadLetters: counts!.dead_letters } satisfies EnabledChange
    }))
  })

export interface RotatedSecret {
  readonly endpoint: EndpointInfo
  /** The new secret, plaintext: give it to the partner. */
  readonly secret: string
  /** Until when the old secret still signs (a second signature); null without a grace window. */
  readonly previousSecretUntil: Date | null
  /** A rotation's grace window was still open: the secret before that one stopped signing now. */
  readonly replacedOpenRotation: boolean
}

/** Longest grace window: a month is plenty to roll a secret out to a partner. */
export const MAX_GRACE_HOURS = 24 * 31

/**
 * Gives an endpoint a new signing secret. For `graceHours` the old secret keeps signing too: each
 * request carries two `v1,` signatures (Standard Webhooks), so the partner can switch over at any
 * time in the window. Queued deliveries pick the new secret up at their next attempt.
 */
export const rotateEndpointSecret = (id: string, graceHours: number, keyring: Keyring, secret?: string) =>
  Effect.gen(function*() {
    if (!Number.isFinite(graceHours) || graceHours < 0 || graceHours > MAX_GRACE_HOURS) {
      return yield* new InvalidEndpoint({ field: "grace", reason: `must be from 0 to ${MAX_GRACE_HOURS} hours, got ${graceHours}` })
    }
    const plaintext = secret === undefined
      ? generateSecret(GENERATED_SECRET_BYTES)
      : yield* validateEndpointSecret(secret)
    const sql = yield* SqlClient.SqlClient
    const graceMs = Math.round(graceHours * 3_600_000)
    // In one statement: the right-hand `secret` is the old value, so the old secret moves to
    // previous_secret atomically with the new one taking its place.
    const rows = yield* sql.unsafe<EndpointInfo & { replaced_open_rotation: boolean }>(
      `WITH before AS (
         SELECT id, previous_secret IS NOT NULL AND previous_secret_expires_at > now() AS open
         FROM partner_webhooks WHERE id = $1 FOR UPDATE
       )
       UPDATE partner_webhooks p
       SET previous_secret = CASE WHEN $2::float8 > 0 THEN p.secret END,
           previous_secret_expires_at = CASE WHEN $2::float8 > 0 THEN now() + $2::float8 * interval '1 millisecond' END,
           secret = $3,
           "updatedAt" = now()
       FROM before
       WHERE p.id = before.id
       RETURNING ${selectInfo("p")}, before.open AS replaced_open_rotation`,
      [id, graceMs, keyring.encrypt(plaintext)]
    )
    if (rows.length === 0) return yield* new EndpointNotFound({ endpointId: id })
    const { replaced_open_rotation, ...endpoint } = rows[0]!
    return {
      endpoint,
      secret: plaintext,
      previousSecretUntil: endpoint.previous_secret_until,
      replacedOpenRotation: replaced_open_rotation
    } satisfies RotatedSecret
  })

export type EndpointError = InvalidEndpoint | EndpointNotFound | SqlError.SqlError
