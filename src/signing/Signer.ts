import * as Data from "effect/Data"
import * as Either from "effect/Either"
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"
import { memoizeBounded } from "../lib/Memo.js"

/**
 * Standard Webhooks signatures (standardwebhooks.com): `v1,` + base64 HMAC-SHA256 over
 * `${id}.${timestamp}.${body}`. A `whsec_` secret is base64-decoded to get the key; any other
 * secret is used as its UTF-8 bytes.
 */
export const signingKey = (secret: string): Buffer =>
  secret.startsWith("whsec_") ? Buffer.from(secret.slice(6), "base64") : Buffer.from(secret, "utf8")

const cachedKey = memoizeBounded(signingKey, 10_000)

/** One `v1,<base64>` signature. */
export const signOne = (secret: string, id: string, timestamp: number, body: string | Uint8Array): string =>
  "v1," +
  createHmac("sha256", cachedKey(secret)).update(`${id}.${timestamp}.`).update(body).digest("base64")

/** The `webhook-signature` header: one signature per secret, space-separated (rotation grace). */
export const signatureHeader = (
  secrets: ReadonlyArray<string>,
  id: string,
  timestamp: number,
  body: string | Uint8Array
): string => secrets.map((secret) => signOne(secret, id, timestamp, body)).join(" ")

/** A new endpoint secret: `whsec_` + base64 of 24 random bytes (the Standard Webhooks form). */
export const generateSecret = (bytes = 24): string => `whsec_${randomBytes(bytes).toString("base64")}`

export class SignatureInvalid extends Data.TaggedError("SignatureInvalid")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

/** Receiver-side tolerance of the Standard Webhooks reference libraries. */
export const TOLERANCE_SECONDS = 5 * 60

/**
 * Verifies a request the way a receiver does: headers present, timestamp within tolerance of
 * `nowSeconds`, and a `v1` signature matching in constant time.
 */
export const verify = (
  secret: string,
  headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>,
  body: string | Uint8Array,
  nowSeconds: number,
  toleranceSeconds = TOLERANCE_SECONDS
): Either.Either<void, SignatureInvalid> => {
  const header = (name: string) => {
    for (const [key, value] of Object.entries(headers)) {
      if (key.toLowerCase() === name) return Array.isArray(value) ? value[0] : (value as string | undefined)
    }
    return undefined
  }
  const id = header("webhook-id")
  const timestampText = header("webhook-timestamp")
  const signatures = header("webhook-signature")
  if (id === undefined || timestampText === undefined || signatures === undefined) {
    return Either.left(new SignatureInvalid({ reason: "missing webhook-id, webhook-timestamp or webhook-signature header" }))
  }
  const timestamp = Number(timestampText)
  if (!/^\d+$/.test(timestampText) || !Number.isSafeInteger(timestamp)) {
    return Either.left(new SignatureInvalid({ reason: "webhook-timestamp is not Unix seconds" }))
  }
  if (nowSeconds - timestamp > toleranceSeconds) return Either.left(new SignatureInvalid({ reason: "timestamp too old" }))
  if (timestamp - nowSeconds > toleranceSeconds) return Either.left(new SignatureInvalid({ reason: "timestamp too new" }))
  const expected = Buffer.from(signOne(secret, id, timestamp, body).slice(3), "base64")
  for (const entry of signatures.split(" ")) {
    const [version, signature] = entry.split(",", 2)
    if (version !== "v1" || signature === undefined) continue
    const given = Buffer.from(signature, "base64")
    if (given.length === expected.length && timingSafeEqual(given, expected)) return Either.void
  }
  return Either.left(new SignatureInvalid({ reason: "no matching signature" }))
}
