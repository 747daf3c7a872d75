import { Webhook } from "standardwebhooks"
import { describe, expect, it } from "vitest"
import { SignatureInvalid, verifyWebhook } from "../../src/index.js"
import { verifyWebhook as verifyFromSubpath } from "../../src/host/Receiver.js"
import { signatureHeader } from "../../src/signing/Signer.js"

const WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
const body = `{"type":"order.created","timestamp":"2026-11-28T18:02:36.825Z","data":{"orderId":42}}`
const id = "01a22352-c579-78bc-83ea-c17e99f0a734"

/** Headers as the worker sends them, signed with the worker's signer. */
const signed = (secrets: ReadonlyArray<string>, timestamp = Math.floor(Date.now() / 1000)) => ({
  "content-type": "application/json",
  "webhook-id": id,
  "webhook-timestamp": String(timestamp),
  "webhook-signature": signatureHeader(secrets, id, timestamp, body)
})

const reasonOf = (run: () => unknown) => {
  try {
    run()
  } catch (error) {
    expect(error).toBeInstanceOf(SignatureInvalid)
    return (error as SignatureInvalid).reason
  }
  throw new Error("expected verifyWebhook to throw")
}

describe("verifyWebhook", () => {
  it("returns the event for an authentic request (Node headers, Fetch Headers, bytes)", () => {
    expect(verifyWebhook(WHSEC, signed([WHSEC]), body)).toEqual({
      type: "order.created",
      timestamp: "2026-11-28T18:02:36.825Z",
      data: { orderId: 42 }
    })
    expect(verifyWebhook("plain secret ünïcode", new Headers(signed(["plain secret ünïcode"])), body).data).toEqual({ orderId: 42 })
    expect(verifyFromSubpath(WHSEC, signed([WHSEC]), Buffer.from(body)).type).toBe("order.created")
    // During an endpoint secret rotation either secret verifies.
    expect(verifyWebhook("old-secret", signed(["new-secret", "old-secret"]), body).type).toBe("order.created")
  })

  it("throws SignatureInvalid with the reason for a forged, stale or incomplete request", () => {
    expect(reasonOf(() => verifyWebhook(WHSEC, signed([WHSEC]), body.replace("42", "43")))).toBe("no matching signature")
    expect(reasonOf(() => verifyWebhook("whsec_b3RoZXI=", signed([WHSEC]), body))).toBe("no matching signature")
    const old = Math.floor(Date.now() / 1000) - 600
    expect(reasonOf(() => verifyWebhook(WHSEC, signed([WHSEC], old), body))).toBe("timestamp too old")
    // …unless the receiver allows more, or it is checked as of then.
    expect(verifyWebhook(WHSEC, signed([WHSEC], old), body, { toleranceSeconds: 900 }).type).toBe("order.created")
    expect(verifyWebhook(WHSEC, signed([WHSEC], old), body, { now: new Date(old * 1000) }).type).toBe("order.created")
    const { "webhook-signature": _, ...unsigned } = signed([WHSEC])
    expect(reasonOf(() => verifyWebhook(WHSEC, unsigned, body))).toMatch(/missing/)
  })

  it("agrees with the stock standardwebhooks library, for whsec_ and raw secrets", () => {
    const at = new Date()
    const fromLibrary = {
      "webhook-id": id,
      "webhook-timestamp": String(Math.floor(at.getTime() / 1000)),
      "webhook-signature": new Webhook(WHSEC).sign(id, at, body)
    }
    expect(verifyWebhook(WHSEC, fromLibrary, body).data).toEqual({ orderId: 42 })
    const raw = "partner-plain-secret"
    const fromLibraryRaw = { ...fromLibrary, "webhook-signature": new Webhook(Buffer.from(raw), { format: "raw" }).sign(id, at, body) }
    expect(verifyWebhook(raw, fromLibraryRaw, body).data).toEqual({ orderId: 42 })
    // And the other way round: the documented one-liners accept what the worker signs.
    expect(new Webhook(WHSEC).verify(body, signed([WHSEC]))).toEqual(JSON.parse(body))
    expect(new Webhook(Buffer.from(raw), { format: "raw" }).verify(body, signed([raw]))).toEqual(JSON.parse(body))
  })
})
