import type { Span } from "@opentelemetry/api"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node"
import { Effect, Exit, Scope } from "effect"
import Pg from "pg"
import { Webhook } from "standardwebhooks"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  ConfigInvalid,
  createWebhookClient,
  EndpointIsDisabled,
  EndpointNotFound,
  type EnqueueRequest,
  EventTypeNotSubscribed,
  InvalidEnqueueRequest,
  isEnqueueError,
  type RunningWorker,
  startWebhookWorker,
  verifyWebhook,
  type WebhookClient
} from "../../src/index.js"
import { makeReceiver, type Receiver } from "../utils/Receiver.js"
import { testDatabase } from "../utils/TestDatabase.js"
import { emptyDatabase, fastWorker, insertEndpointPg, queueRowsPg, TEST_KEY, waitFor } from "./fixtures.js"

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// The app's OpenTelemetry SDK, registered globally as an app does at start-up.
const exporter = new InMemorySpanExporter()
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
provider.register()
const tracer = provider.getTracer("node-app")

const scope = Effect.runSync(Scope.make())
let url: string
let pool: Pg.Pool
let webhooks: WebhookClient
let worker: RunningWorker
let receiver: Receiver

beforeAll(async () => {
  url = (await Effect.runPromise(Scope.extend(testDatabase, scope))).url
  receiver = await Effect.runPromise(Scope.extend(makeReceiver, scope))
  pool = new Pg.Pool({ connectionString: url, max: 6 })
  await pool.query("CREATE TABLE orders (id serial PRIMARY KEY, total integer NOT NULL)")
  webhooks = createWebhookClient({ pool }, { encryptionKey: TEST_KEY })
  worker = await startWebhookWorker({ pool }, { ...fastWorker, encryptionKey: TEST_KEY, tracing: true, logLevel: "WARN" })
})

afterAll(async () => {
  await worker?.stop()
  await webhooks?.close()
  await pool?.end()
  await Effect.runPromise(Scope.close(scope, Exit.void))
  await provider.shutdown()
})

/** The app's code path: one pg transaction for the order and its webhook. */
const placeOrder = async (total: number, request: (orderId: number) => EnqueueRequest, fail = false) => {
  const client = await pool.connect()
  try {
    await client.query("BEGIN")
    const { rows } = await client.query<{ id: number }>("INSERT INTO orders (total) VALUES ($1) RETURNING id", [total])
    const enqueued = await webhooks.enqueue(request(rows[0]!.id), { client })
    if (fail) throw new Error("payment declined")
    await client.query("COMMIT")
    return { orderId: rows[0]!.id, enqueued }
  } catch (error) {
    await client.query("ROLLBACK")
    throw error
  } finally {
    client.release()
  }
}

const toPartner = (path: string) => (orderId: number): EnqueueRequest => ({
  destination: { url: receiver.url(path), secret: SECRET },
  eventType: "order.created",
  payload: { orderId }
})

const statusOf = async (id: string) => (await queueRowsPg(pool)).find((row) => row.id === id)?.status
const requestsTo = (path: string) => receiver.requests.filter((request) => request.path === path)

describe("Promise API: createWebhookClient inside a pg transaction", () => {
  it("commit → delivered, signed; the row carries the app's active OTel span", async () => {
    let span: Span | undefined
    const { enqueued, orderId } = await tracer.startActiveSpan("POST /orders", async (active) => {
      span = active
      try {
        return await placeOrder(42, toPartner("/commit"))
      } finally {
        active.end()
      }
    })
    const row = (await queueRowsPg(pool)).find((r) => r.id === enqueued.id)!
    expect(row.traceparent).toBe(`00-${span!.spanContext().traceId}-${span!.spanContext().spanId}-01`)
    expect(enqueued.duplicate).toBe(false)
    await waitFor(async () => (await statusOf(enqueued.id)) === "delivered", "delivered")
    const [request] = requestsTo("/commit")
    expect(verifyWebhook(SECRET, request!.headers, request!.body)).toMatchObject({ type: "order.created", data: { orderId } })
    expect(new Webhook(SECRET).verify(request!.body, request!.headers as Record<string, string>)).toMatchObject({ data: { orderId } })

    // The worker's delivery span (tracing: true) went to the app's SDK, under the app's trace.
    const deliver = await waitFor(
      async () => exporter.getFinishedSpans().find((span) => span.name === "webhook.deliver" && span.attributes["webhook.id"] === enqueued.id),
      "delivery span"
    )
    const appSpan = exporter.getFinishedSpans().find((span) => span.name === "POST /orders")!
    expect(deliver.links.map((link) => link.context.spanId)).toContain(appSpan.spanContext().spanId)
  })

  it("rollback → nothing queued, nothing delivered", async () => {
    await expect(placeOrder(13, toPartner("/rollback"), true)).rejects.toThrow("payment declined")
    expect((await pool.query("SELECT * FROM orders WHERE total = 13")).rows).toEqual([])
    expect((await queueRowsPg(pool)).filter((row) => row.url === receiver.url("/rollback"))).toEqual([])
    // A later committed delivery to the same place arrives, and is the only one there.
    const { enqueued } = await placeOrder(14, toPartner("/rollback"))
    await waitFor(async () => (await statusOf(enqueued.id)) === "delivered", "sentinel delivered")
    expect(requestsTo("/rollback").map((request) => request.headers["webhook-id"])).toEqual([enqueued.id])
  })

  it("a duplicate idempotency key resolves to the existing delivery with duplicate: true", async () => {
    const request = { ...toPartner("/dup")(1), idempotencyKey: "order-1-created" }
    const first = await webhooks.enqueue(request)
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      const again = await webhooks.enqueue(request, { client })
      expect(again).toEqual({ id: first.id, duplicate: true })
      await client.query("COMMIT")
    } finally {
      client.release()
    }
    const many = await webhooks.enqueueMany([request, { ...request, idempotencyKey: "order-2-created" }])
    expect(many[0]).toEqual({ id: first.id, duplicate: true })
    expect(many[1]!.duplicate).toBe(false)
    await waitFor(async () => requestsTo("/dup").length === 2 || undefined, "two deliveries")
    await new Promise((resolve) => setTimeout(resolve, 400))
    expect(requestsTo("/dup").map((r) => r.headers["webhook-id"]).sort()).toEqual([first.id, many[1]!.id].sort())
  })

  it("rejects with typed errors, and the app's transaction stays usable after one", async () => {
    const endpointId = await insertEndpointPg(pool, { url: receiver.url("/ep"), secret: "ep-secret", eventTypes: ["order.created"] })
    const disabledId = await insertEndpointPg(pool, { url: receiver.url("/off"), secret: "x", enabled: false })
    const base = { eventType: "order.created", payload: {} }

    const invalidUrl = await webhooks.enqueue({ ...base, destination: { url: "not a url", secret: SECRET } }).catch((e: unknown) => e)
    expect(invalidUrl).toBeInstanceOf(InvalidEnqueueRequest)
    expect(invalidUrl).toMatchObject({ _tag: "InvalidEnqueueRequest", field: "url" })
    expect(isEnqueueError(invalidUrl)).toBe(true)
    const badSecret = await webhooks.enqueue({ ...base, destination: { url: receiver.url(), secret: "whsec_!!" } }).catch((e: unknown) => e)
    expect(badSecret).toMatchObject({ _tag: "InvalidEnqueueRequest", field: "secret" })
    const unknown = await webhooks.enqueue({ ...base, destination: { endpointId: "0190f1d2-0000-7000-8000-000000000000" } }).catch((e: unknown) => e)
    expect(unknown).toBeInstanceOf(EndpointNotFound)
    const disabled = await webhooks.enqueue({ ...base, destination: { endpointId: disabledId } }).catch((e: unknown) => e)
    expect(disabled).toBeInstanceOf(EndpointIsDisabled)
    const unsubscribed = await webhooks.enqueue({ ...base, eventType: "order.refunded", destination: { endpointId } }).catch((e: unknown) => e)
    expect(unsubscribed).toBeInstanceOf(EventTypeNotSubscribed)
    expect((unsubscribed as Error).message).toContain("does not subscribe to order.refunded")

    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      await client.query("INSERT INTO orders (total) VALUES (77)")
      await expect(webhooks.enqueue({ ...base, destination: { endpointId: disabledId } }, { client })).rejects.toBeInstanceOf(EndpointIsDisabled)
      const ok = await webhooks.enqueue({ ...base, destination: { endpointId } }, { client })
      await client.query("COMMIT")
      await waitFor(async () => (await statusOf(ok.id)) === "delivered", "endpoint delivery")
    } finally {
      client.release()
    }
    expect((await pool.query("SELECT * FROM orders WHERE total = 77")).rows).toHaveLength(1)
    const [request] = requestsTo("/ep")
    expect(verifyWebhook("ep-secret", request!.headers, request!.body).type).toBe("order.created")
  })

  it("a database failure rejects with pg's own error, not a typed one", async () => {
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      await client.query("SELECT 1/0").catch(() => undefined)
      const error = await webhooks.enqueue(toPartner("/aborted")(1), { client }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(Error)
      expect(error).toMatchObject({ code: "25P02" }) // in_failed_sql_transaction
      expect(isEnqueueError(error)).toBe(false)
    } finally {
      await client.query("ROLLBACK")
      client.release()
    }
  })

  it("without encryptionKey: deliveries to registered endpoints are queued and delivered; a URL+secret one is refused with ConfigInvalid naming the option", async () => {
    const producer = createWebhookClient({ pool })
    const endpointId = await insertEndpointPg(pool, { url: receiver.url("/keyless-ep"), secret: "ep-keyless" })
    const toEndpoint = { destination: { endpointId }, eventType: "order.created", payload: { n: 1 } }
    const toUrl = { destination: { url: receiver.url("/keyless-url"), secret: SECRET }, eventType: "order.created", payload: { n: 2 } }

    const queued = await producer.enqueue(toEndpoint)
    await waitFor(async () => (await statusOf(queued.id)) === "delivered", "keyless endpoint delivery")
    const [request] = requestsTo("/keyless-ep")
    expect(verifyWebhook("ep-keyless", request!.headers, request!.body)).toMatchObject({ data: { n: 1 } })

    const refused = await producer.enqueue(toUrl).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(ConfigInvalid)
    expect(refused).toMatchObject({ variable: "encryptionKey" })
    expect((refused as Error).message).toMatch(/^encryptionKey: is required to enqueue to a URL with its secret.*WEBHOOK_SECRET_ENCRYPTION_KEY/)
    expect(isEnqueueError(refused)).toBe(false)
    // All or nothing: the endpoint delivery beside it is not queued either.
    const before = (await queueRowsPg(pool)).length
    await expect(producer.enqueueMany([toEndpoint, toUrl])).rejects.toBeInstanceOf(ConfigInvalid)
    expect((await queueRowsPg(pool)).length).toBe(before)
    expect((await queueRowsPg(pool)).filter((row) => row.url === receiver.url("/keyless-url"))).toEqual([])
    await producer.close()
  })

  it("bad options throw ConfigInvalid naming the option", async () => {
    expect(() => createWebhookClient({ pool }, { encryptionKey: "" })).toThrow(ConfigInvalid)
    expect(() => createWebhookClient({ pool }, { encryptionKey: "c2hvcnQ=" })).toThrow(/encryptionKey: expected base64 of 32 random bytes/)
    const error = await startWebhookWorker({ pool }, { encryptionKey: TEST_KEY, batchSize: 0 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ConfigInvalid)
    expect(error).toMatchObject({ variable: "batchSize" })
  })
})

describe("Promise API: its own pool from a connection string", () => {
  it("migrates an empty database, enqueues, and close() ends only the pool it opened", async () => {
    const scope = Effect.runSync(Scope.make())
    try {
      const empty = await Effect.runPromise(Scope.extend(emptyDatabase, scope))
      const own = createWebhookClient({ connectionString: empty.url }, { encryptionKey: TEST_KEY, defaultMaxAttempts: 3 })
      const applied = await own.migrate()
      expect(applied.length).toBeGreaterThan(0)
      expect(await own.migrate()).toEqual([])
      const enqueued = await own.enqueue({ destination: { url: "https://partner.example/hook", secret: SECRET }, eventType: "a.b", payload: 1 })
      const check = new Pg.Pool({ connectionString: empty.url, max: 1 })
      const [row] = await queueRowsPg(check)
      expect(row).toMatchObject({ id: enqueued.id, max_attempts: 3, status: "pending" })

      // A producer that enqueues only to registered endpoints needs no key: createWebhookClient({ connectionString }).
      const keyless = createWebhookClient({ connectionString: empty.url })
      const endpointId = await insertEndpointPg(check, { url: "https://partner.example/ep", secret: "s" })
      const viaEndpoint = await keyless.enqueue({ destination: { endpointId }, eventType: "a.b", payload: 2 })
      expect((await queueRowsPg(check)).find((r) => r.id === viaEndpoint.id)).toMatchObject({ endpoint_id: endpointId, url: null, secret: null, status: "pending" })
      await keyless.close()
      await check.end()
      await own.close()
      await expect(own.enqueue({ destination: { url: "https://partner.example/hook", secret: SECRET }, eventType: "a.b", payload: 1 }))
        .rejects.toThrow(/pool/i)

      // A client over the app's pool leaves it open.
      const shared = createWebhookClient({ pool }, { encryptionKey: TEST_KEY })
      await shared.close()
      expect((await pool.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }])
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })
})
