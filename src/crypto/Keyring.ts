import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto"
import { type AppSettings, decodeEncryptionKey } from "../config/AppConfig.js"
import { memoizeBounded } from "../lib/Memo.js"

/**
 * Secrets at rest: AES-256-GCM, stored as `enc:v1:<key id>:<base64(iv | ciphertext | tag)>`.
 * The key id is a fingerprint of the key, so any of the current and previous keys can be picked
 * for decryption without trying each, and a rotation knows which rows are still on an old key.
 */
const PREFIX = "enc:v1:"
const IV_BYTES = 12
const TAG_BYTES = 16
// Binds ciphertexts to this use, so a value encrypted for something else cannot be passed off as a secret.
const AAD = Buffer.from("webhook-worker secret v1")

export class SecretUndecryptable extends Data.TaggedError("SecretUndecryptable")<{
  readonly reason: string
}> {
  override get message() {
    return `undecryptable secret: ${this.reason}`
  }
}

export const keyId = (key: Uint8Array): string =>
  createHash("sha256").update("webhook-worker key id\0").update(key).digest("hex").slice(0, 8)

export const isEncrypted = (stored: string): boolean => stored.startsWith(PREFIX)

/** The key id of an encrypted value, or none for plaintext. */
export const storedKeyId = (stored: string): Option.Option<string> =>
  isEncrypted(stored) ? Option.some(stored.slice(PREFIX.length, PREFIX.length + 8)) : Option.none()

export class Keyring {
  readonly currentId: string
  private readonly keys: ReadonlyMap<string, Buffer>
  private readonly current: Buffer
  // Decrypting is ~10 µs; deliveries to one destination share one stored value, so this pays.
  private readonly decrypted = memoizeBounded((stored) => this.decryptFresh(stored), 10_000)
  private readonly encrypted = memoizeBounded((plaintext) => this.encryptFresh(plaintext), 10_000)

  constructor(current: Buffer, previous: ReadonlyArray<Buffer>) {
    this.current = current
    this.currentId = keyId(current)
    const keys = new Map<string, Buffer>()
    for (const key of previous) keys.set(keyId(key), key)
    keys.set(this.currentId, current)
    this.keys = keys
  }

  /**
   * Encrypts under the current key with a fresh random IV. The same secret queued again gets the
   * same stored value (it is remembered, bounded): the worker then decrypts it once, not once per
   * row (AES-GCM set-up is ~15 µs, measured, a tenth of a delivery's CPU). Rows sharing a secret
   * share a value at rest; nothing is encrypted twice under one IV.
   */
  encrypt(plaintext: string): string {
    return this.encrypted(plaintext)
  }

  private encryptFresh(plaintext: string): string {
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv("aes-256-gcm", this.current, iv)
    cipher.setAAD(AAD)
    const body = Buffer.concat([iv, cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()])
    return `${PREFIX}${this.currentId}:${body.toString("base64")}`
  }

  /** Plaintext of a stored secret. A value without the `enc:v1:` prefix is plaintext already. */
  decrypt(stored: string): Either.Either<string, SecretUndecryptable> {
    return isEncrypted(stored) ? this.decrypted(stored) : Either.right(stored)
  }

  private decryptFresh(stored: string): Either.Either<string, SecretUndecryptable> {
    const id = stored.slice(PREFIX.length, PREFIX.length + 8)
    const key = this.keys.get(id)
    if (key === undefined) {
      return Either.left(
        new SecretUndecryptable({
          reason: `encrypted with key ${id}, which is neither WEBHOOK_SECRET_ENCRYPTION_KEY nor in WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS`
        })
      )
    }
    const body = Buffer.from(stored.slice(PREFIX.length + 9), "base64")
    if (stored[PREFIX.length + 8] !== ":" || body.length < IV_BYTES + TAG_BYTES) {
      return Either.left(new SecretUndecryptable({ reason: "malformed encrypted value" }))
    }
    try {
      const decipher = createDecipheriv("aes-256-gcm", key, body.subarray(0, IV_BYTES))
      decipher.setAAD(AAD)
      decipher.setAuthTag(body.subarray(body.length - TAG_BYTES))
      const plaintext = Buffer.concat([
        decipher.update(body.subarray(IV_BYTES, body.length - TAG_BYTES)),
        decipher.final()
      ]).toString("utf8")
      return Either.right(plaintext)
    } catch {
      return Either.left(
        new SecretUndecryptable({ reason: `authentication failed under key ${id} (value corrupted or key wrong)` })
      )
    }
  }

  /** True when the stored value is plaintext or under an older key: the worker re-encrypts it. */
  needsEncryption(stored: string): boolean {
    return !stored.startsWith(PREFIX) || stored.slice(PREFIX.length, PREFIX.length + 8) !== this.currentId
  }

  /** Key ids this keyring can decrypt. */
  knownKeyIds(): ReadonlyArray<string> {
    return [...this.keys.keys()]
  }
}

const byKeys = new WeakMap<AppSettings, Option.Option<Keyring>>()

/** The keyring of these settings (none when no key is configured); built once per settings value. */
export const keyringOf = (settings: AppSettings): Option.Option<Keyring> => {
  const known = byKeys.get(settings)
  if (known !== undefined) return known
  const keyring = Option.map(settings.encryptionKey, (current) =>
    new Keyring(
      Either.getOrThrow(decodeEncryptionKey(Redacted.value(current))),
      settings.previousEncryptionKeys.map((key) => Either.getOrThrow(decodeEncryptionKey(Redacted.value(key))))
    ))
  byKeys.set(settings, keyring)
  return keyring
}

/** A new random encryption key, base64 (what `webhook-worker keygen` prints). */
export const generateEncryptionKey = (): string => randomBytes(32).toString("base64")
