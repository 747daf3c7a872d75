import * as Either from "effect/Either"
import { SignatureInvalid, TOLERANCE_SECONDS, verify } from "../signing/Signer.js"

export { SignatureInvalid } from "../signing/Signer.js"

/** Request headers as Node (`req.headers`) or the Fetch API (`request.headers`) gives them. */
export type WebhookHeaders =
  | Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
  | { forEach(callback: (value: string, key: string) => void): void }

/** What a delivery's body holds (SPEC.md "The request a receiver gets"). */
export interface WebhookEvent<Data = unknown> {
  readonly type: string
  /** ISO-8601 time of the event. */
  readonly timestamp: string
  readonly data: Data
}

export interface VerifyOptions {
  /** How far `webhook-timestamp` may be from now, in seconds (default 300, as the reference libraries). */
  readonly toleranceSeconds?: number | undefined
  /** "Now" for the tolerance check (default: the clock). */
  readonly now?: Date | undefined
}

const isFetchHeaders = (headers: WebhookHeaders): headers is { forEach(callback: (value: string, key: string) => void): void } =>
  typeof (headers as { forEach?: unknown }).forEach === "function"

const plainHeaders = (headers: WebhookHeaders): Readonly<Record<string, string | ReadonlyArray<string> | undefined>> => {
  if (!isFetchHeaders(headers)) return headers
  const record: Record<string, string> = {}
  headers.forEach((value, key) => {
    record[key.toLowerCase()] = value
  })
  return record
}

/**
 * Checks a webhook the way the Standard Webhooks libraries do: `webhook-id`,
 * `webhook-timestamp` within tolerance, and a `v1` signature over `id.timestamp.body` that
 * matches in constant time. `body` must be the raw bytes received (not re-serialised JSON).
 * A `whsec_` secret is base64-decoded; any other secret is used as its UTF-8 bytes.
 *
 * Returns the parsed event; throws `SignatureInvalid` (with a `reason`) when the request is not
 * authentic.
 */
export const verifyWebhook = <Data = unknown>(
  secret: string,
  headers: WebhookHeaders,
  body: string | Uint8Array,
  options: VerifyOptions = {}
): WebhookEvent<Data> => {
  const now = Math.floor((options.now?.getTime() ?? Date.now()) / 1000)
  const result = verify(secret, plainHeaders(headers), body, now, options.toleranceSeconds ?? TOLERANCE_SECONDS)
  if (Either.isLeft(result)) throw result.left
  try {
    return JSON.parse(typeof body === "string" ? body : Buffer.from(body).toString("utf8")) as WebhookEvent<Data>
  } catch {
    // Authentic but not JSON: not something this worker sends.
    throw new SignatureInvalid({ reason: "the signed body is not JSON" })
  }
}
