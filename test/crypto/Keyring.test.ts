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

  it.prop("each encryption uses a fresh IV", [key, secret], ([k, s]) => {
    const keyring = new Keyring(k, [])
    expect(keyring.encrypt(s)).not.toBe(keyring.encrypt(s))
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
