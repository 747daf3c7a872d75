/**
 * The job every peer runs, and the sign+POST ceiling loop: Standard Webhooks headers
 * (HMAC-SHA256 over `id.timestamp.body`, base64) and a POST through an undici keep-alive Pool.
 * Any 2xx is success; anything else throws, so the peer's own retry logic sees a failure.
 */
import { createHmac } from "node:crypto"
import { Pool } from "undici"

export interface Deliverer {
  readonly send: (id: string, body: string) => Promise<void>
  readonly close: () => Promise<void>
}

export const makeDeliverer = (url: string, secret: string, connections: number): Deliverer => {
  const target = new URL(url)
  const key = Buffer.from(secret.slice("whsec_".length), "base64")
  const pool = new Pool(target.origin, { connections, pipelining: 1, keepAliveTimeout: 30_000 })
  return {
    send: async (id, body) => {
      const timestamp = Math.floor(Date.now() / 1000)
      const signature = "v1," + createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64")
      const response = await pool.request({
        path: target.pathname,
        method: "POST",
        headers: {
          "content-type": "application/json",
          "webhook-id": id,
          "webhook-timestamp": String(timestamp),
          "webhook-signature": signature
        },
        body
      })
      await response.body.dump()
      if (response.statusCode < 200 || response.statusCode >= 300) throw new Error(`HTTP ${response.statusCode}`)
    },
    close: () => pool.close()
  }
}

/** Reads a required environment variable. */
export const env = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === "") throw new Error(`${name} is not set`)
  return value
}
