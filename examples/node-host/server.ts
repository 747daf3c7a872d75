/**
 * A plain node:http + pg app (no Effect) that takes orders and queues an `order.created`
 * webhook in the same `pg` transaction as the order, with the webhook worker running in the same
 * process. See README.md beside this file for how to run it.
 *
 * In your app the import is `from "webhook-worker"`; the example imports the source so it runs
 * from a checkout without a build.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import pg from "pg"
import { createWebhookClient, type Destination, isEnqueueError, startWebhookWorker } from "../../src/index.js"

const env = (name: string, fallback?: string): string => {
  const value = process.env[name] ?? fallback
  if (value === undefined || value === "") {
    console.error(`node-host: ${name} is not set`)
    process.exit(2)
  }
  return value
}

const encryptionKey = env("WEBHOOK_SECRET_ENCRYPTION_KEY")
const partner: Destination = process.env.PARTNER_ENDPOINT_ID
  ? { endpointId: process.env.PARTNER_ENDPOINT_ID }
  : { url: env("PARTNER_URL"), secret: env("PARTNER_SECRET") }

// The app's own pool: the webhook client and the worker share it.
const pool = new pg.Pool({ connectionString: env("DATABASE_URL"), max: 8 })
const webhooks = createWebhookClient({ pool }, { encryptionKey })

// The webhook tables (once each, safe from several processes), then the app's own table.
await webhooks.migrate()
await pool.query(`CREATE TABLE IF NOT EXISTS example_orders (
  id serial PRIMARY KEY,
  customer text NOT NULL,
  total_cents integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
)`)

// The worker in-process; RUN_WORKER=false leaves delivery to `webhook-worker run` elsewhere.
const worker = process.env.RUN_WORKER === "false"
  ? undefined
  : await startWebhookWorker({ pool }, {
    encryptionKey,
    // Settings given in code are not read from the environment: pass what you want on purpose.
    allowPrivateNetworks: process.env.WEBHOOK_ALLOW_PRIVATE_NETWORKS === "true",
    shutdownGracePeriod: "30 seconds",
    logFormat: "pretty"
  })

const readJson = (req: IncomingMessage) =>
  new Promise<unknown>((resolve, reject) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")))
      } catch (error) {
        reject(error)
      }
    })
    req.on("error", reject)
  })

const send = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json" })
  res.end(JSON.stringify(body))
}

class PaymentDeclined extends Error {}

const createOrder = async (req: IncomingMessage, res: ServerResponse) => {
  let input: { customer?: unknown; totalCents?: unknown; declinePayment?: unknown }
  try {
    input = (await readJson(req)) as typeof input
  } catch {
    return send(res, 400, { error: "body must be JSON" })
  }
  if (typeof input.customer !== "string" || !Number.isInteger(input.totalCents)) {
    return send(res, 400, { error: "customer (string) and totalCents (integer) are required" })
  }
  const client = await pool.connect()
  try {
    await client.query("BEGIN")
    const { rows } = await client.query<{ id: number }>(
      "INSERT INTO example_orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
      [input.customer, input.totalCents]
    )
    const orderId = rows[0]!.id
    // `{ client }`: the webhook is written in this transaction, and commits or rolls back with it.
    const webhook = await webhooks.enqueue({
      destination: partner,
      eventType: "order.created",
      payload: { orderId, customer: input.customer, totalCents: input.totalCents },
      idempotencyKey: `order-${orderId}-created`
    }, { client })
    // Simulates a failure after the writes, to show that the webhook rolls back with the order.
    if (input.declinePayment === true) throw new PaymentDeclined()
    await client.query("COMMIT")
    send(res, 201, { orderId, webhookId: webhook.id })
  } catch (error) {
    await client.query("ROLLBACK")
    if (error instanceof PaymentDeclined) return send(res, 402, { error: "payment declined" })
    // The partner setup is wrong (unknown/disabled endpoint, unsubscribed event, bad URL).
    if (isEnqueueError(error)) return send(res, 503, { error: error.message })
    console.error(error)
    send(res, 500, { error: "internal error" })
  } finally {
    client.release()
  }
}

const server = createServer((req, res) => {
  if (req.method === "POST" && req.url === "/orders") {
    createOrder(req, res).catch((error: unknown) => {
      console.error(error)
      if (!res.headersSent) send(res, 500, { error: "internal error" })
    })
  } else {
    send(res, 404, { error: "not found" })
  }
})

server.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "127.0.0.1", () => {
  const address = server.address()
  if (address !== null && typeof address === "object") console.log(`Listening on http://${address.address}:${address.port}`)
})

// Stop taking requests, let the worker finish in-flight deliveries, then close the pool.
const shutdown = async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()))
  await worker?.stop()
  await webhooks.close()
  await pool.end()
}
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    shutdown().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(error)
        process.exit(1)
      }
    )
  })
}
