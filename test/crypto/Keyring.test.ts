import { it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import { randomBytes } from "node:crypto"
import { describe, expect } from "vitest"
import { isEncrypted, Keyring, keyId, storedKeyId } from "../../src/crypto/Keyring.js"

const key = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((bytes) => Buffer.from(bytes))
const secret = fc.string({ unit: "grapheme", minLength: 1, maxLength: 200 })

describe("Keyring (AES-256-GCM secrets at rest)", () => {
  it.prop("decrypt(encrypt(s)) = s, and the ciphertext never contains the plaintext", [key, secret], ([k, s]) => {
    const keyring = new Keyring(k, [])
    const stored = keyring.encrypt(s)
    expect(isEncrypted(stored)).toBe(true)
    expect(stored.startsWith(`enc:v1:${keyId(k)}:`)).toBe(true)
    if (s.length >= 4) expect(stored.includes(s)).toBe(false)
    expect(keyring.decrypt(stored)).toEqual(Either.right(s))
  })

  const iv = (stored: string) => Buffer.from(stored.slice("enc:v1:".length + 9), "base64").subarray(0, 12).toString("hex")

  it.prop("distinct secrets never share an IV; the same secret again gets the same stored value", [key, fc.uniqueArray(secret, { minLength: 2, maxLength: 20 })], ([k, secrets]) => {
    const keyring = new Keyring(k, [])
    const stored = secrets.map((s) => keyring.encrypt(s))
    expect(new Set(stored.map(iv)).size).toBe(secrets.length)
    // Queued again (another row to the same destination): one value at rest, decrypted once.
    expect(secrets.map((s) => keyring.encrypt(s))).toEqual(stored)
    // Another process (a second keyring on the same key) encrypts afresh, under another IV.
    expect(iv(new Keyring(k, []).encrypt(secrets[0]!))).not.toBe(iv(stored[0]!))
  })

  it.prop("a previous key still decrypts; an unknown key is reported by its id", [key, key, secret], ([oldKey, newKey, s]) => {
    fc.pre(!oldKey.equals(newKey))
    const stored = new Keyring(oldKey, []).encrypt(s)
    const rotated = new Keyring(newKey, [oldKey])
    expect(rotated.decrypt(stored)).toEqual(Either.right(s))
    expect(rotated.needsEncryption(stored)).toBe(true)
    expect(rotated.needsEncryption(rotated.encrypt(s))).toBe(false)
    const without = new Keyring(newKey, []).decrypt(stored)
    expect(Either.isLeft(without)).toBe(true)
    expect(Either.getLeft(without).pipe((e) => e._tag === "Some" && e.value.reason)).toContain(keyId(oldKey))
  })

  it.prop("any altered byte fails authentication instead of yielding a wrong secret", [key, secret, fc.nat()], ([k, s, n]) => {
    const keyring = new Keyring(k, [])
    const stored = keyring.encrypt(s)
    const prefix = stored.slice(0, stored.lastIndexOf(":") + 1)
    const body = Buffer.from(stored.slice(prefix.length), "base64")
    body[n % body.length]! ^= 0x01
    expect(Either.isLeft(new Keyring(k, []).decrypt(prefix + body.toString("base64")))).toBe(true)
  })

  it("plaintext (a producer's raw insert) passes through and is flagged for encryption", () => {
    const keyring = new Keyring(randomBytes(32), [])
    expect(keyring.decrypt("test_secret")).toEqual(Either.right("test_secret"))
    expect(keyring.needsEncryption("test_secret")).toBe(true)
    expect(storedKeyId("test_secret")._tag).toBe("None")
  })
})
