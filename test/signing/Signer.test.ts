import { it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import { Webhook } from "standardwebhooks"
import { describe, expect } from "vitest"
import { generateSecret, signatureHeader, signingKey, signOne, verify } from "../../src/signing/Signer.js"

const base64Secret = fc.uint8Array({ minLength: 24, maxLength: 64 }).map((bytes) => `whsec_${Buffer.from(bytes).toString("base64")}`)
const msgId = fc.stringMatching(/^[A-Za-z0-9_-]{1,40}$/)
const timestamp = fc.integer({ min: 1_000_000_000, max: 4_000_000_000 })
const body = fc.string({ unit: "binary", maxLength: 2000 })
// The stock library parses what it verifies, and we always send JSON.
const jsonBody = fc.json({ maxDepth: 3 })

describe("Signer (Standard Webhooks)", () => {
  it("matches the specification's published test vector", () => {
    expect(signOne("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, `{"test": 2432232314}`))
      .toBe("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
  })

  it("matches the Rust library's vector and the empty-body vector", () => {
    expect(signOne(
      "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
      "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
      1649367553,
      `{"email":"test@example.com","username":"test_user"}`
    )).toBe("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
    expect(signOne("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, ""))
      .toBe("v1,v48jdbgvh29KJz2Qc+ghw8G6vG3nAKnujWBg8oM/62A=")
  })

  it("uses a non-whsec secret as its UTF-8 bytes", () => {
    expect(signingKey("test_secret")).toEqual(Buffer.from("test_secret", "utf8"))
    expect(signingKey("whsec_AAEC")).toEqual(Buffer.from([0, 1, 2]))
  })

  it.prop("the stock standardwebhooks library verifies every signature we make", [base64Secret, msgId, jsonBody], ([secret, id, payload]) => {
    const now = Math.floor(Date.now() / 1000)
    const headers = { "webhook-id": id, "webhook-timestamp": String(now), "webhook-signature": signatureHeader([secret], id, now, payload) }
    expect(() => new Webhook(secret).verify(payload, headers)).not.toThrow()
  })

  it.prop("sign then verify round-trips, and any change to id, timestamp or body is rejected", [base64Secret, msgId, timestamp, body, fc.nat()], ([secret, id, ts, payload, n]) => {
    const headers = { "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": signOne(secret, id, ts, payload) }
    expect(Either.isRight(verify(secret, headers, payload, ts))).toBe(true)
    const tampered = payload.length === 0 ? "x" : payload.slice(0, n % payload.length) + String.fromCharCode((payload.charCodeAt(n % payload.length) + 1) % 256) + payload.slice((n % payload.length) + 1)
    expect(Either.isLeft(verify(secret, headers, tampered, ts))).toBe(true)
    expect(Either.isLeft(verify(secret, { ...headers, "webhook-id": id + "x" }, payload, ts))).toBe(true)
    expect(Either.isLeft(verify(secret, { ...headers, "webhook-timestamp": String(ts + 1) }, payload, ts))).toBe(true)
  })

  it.prop("a rotation header carries one signature per secret, and each secret verifies alone", [base64Secret, base64Secret, msgId, jsonBody], ([current, previous, id, payload]) => {
    const now = Math.floor(Date.now() / 1000)
    const header = signatureHeader([current, previous], id, now, payload)
    expect(header.split(" ")).toHaveLength(2)
    for (const secret of [current, previous]) {
      const headers = { "webhook-id": id, "webhook-timestamp": String(now), "webhook-signature": header }
      expect(() => new Webhook(secret).verify(payload, headers)).not.toThrow()
    }
  })

  it("rejects timestamps outside the 5 minute tolerance", () => {
    const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    const sign = (ts: number) => ({ "webhook-id": "m", "webhook-timestamp": String(ts), "webhook-signature": signOne(secret, "m", ts, "{}") })
    const now = 1_700_000_000
    expect(verify(secret, sign(now - 301), "{}", now)).toEqual(Either.left(expect.objectContaining({ reason: "timestamp too old" })))
    expect(verify(secret, sign(now + 301), "{}", now)).toEqual(Either.left(expect.objectContaining({ reason: "timestamp too new" })))
    expect(Either.isRight(verify(secret, sign(now - 300), "{}", now))).toBe(true)
  })

  it("generates whsec_ secrets of 24 random bytes", () => {
    const secret = generateSecret()
    expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/)
    expect(signingKey(secret)).toHaveLength(24)
    expect(generateSecret()).not.toBe(secret)
  })
})
