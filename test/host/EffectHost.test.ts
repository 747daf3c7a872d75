import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { ConfigProvider, Duration, Effect, Layer, Option, type Scope, String as Str } from "effect"
import { Webhook } from "standardwebhooks"
import { describe, expect } from "vitest"
import { resolve } from "../../src/host/HostConfig.js"
import { type EnqueueRequest, verifyWebhook, WebhookQueue, WebhookWorker } from "../../src/index.js"
import { makeReceiver } from "../utils/Receiver.js"
import { eventually } from "../utils/WorkerHarness.js"
import { createOrders, fastWorker, hostPg, insertEndpoint, queueRows, TEST_KEY } from "./fixtures.js"

/** The host app's runtime: its own PgClient, the queue on it, and the worker in-process. */
const hostLayer = (pg = hostPg()) =>
  Layer.mergeAll(
    WebhookQueue.layer({ encryptionKey: TEST_KEY }),
    WebhookWorker.layer({ settings: fastWorker })
  ).pipe(Layer.provideMerge(pg))

type HostServices = WebhookQueue.WebhookQueue | SqlClient.SqlClient | PgClient.PgClient | Scope.Scope

const inHost = <A, E>(effect: Effect.Effect<A, E, HostServices>, pg = hostPg()) =>
  effect.pipe(Effect.provide(hostLayer(pg)), Effect.scoped)

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

const rowsWithStatus = (status: string) => Effect.map(queueRows, (rows) => rows.filter((row) => row.status === status))

describe("Effect API: WebhookQueue on the host's SqlClient", () => {
  it.live("a webhook enqueued in a committed transaction is delivered, signed", () =>
    inHost(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      yield* createOrders
      const { enqueued, orderId } = yield* sql.withTransaction(Effect.gen(function*() {
        const [order] = yield* sql<{ id: number }>`INSERT INTO orders (total) VALUES (4200) RETURNING id`
        const enqueued = yield* WebhookQueue.enqueue({
          destination: { url: receiver.url("/partner"), secret: SECRET },
          eventType: "order.created",
          payload: { orderId: order!.id, total: 4200 },
          userId: "user_1"
        })
        return { enqueued, orderId: order!.id }
      }))
      expect(enqueued.duplicate).toBe(false)

      const [request] = yield* receiver.waitForRequests(1)
      expect(request!.headers["webhook-id"]).toBe(enqueued.id)
      const event = verifyWebhook(SECRET, request!.headers, request!.body)
      expect(event.type).toBe("order.created")
      expect(event.data).toEqual({ orderId, total: 4200 })
      // The stock library agrees.
      expect(new Webhook(SECRET).verify(request!.body, request!.headers as Record<string, string>)).toEqual(event)

      const [row] = yield* eventually(rowsWithStatus("delivered").pipe(Effect.map((rows) => rows.length === 1 ? rows : undefined)), "delivered")
      expect(row!.id).toBe(enqueued.id)
      expect(row!.user_id).toBe("user_1")
      expect(row!.secret).toMatch(/^enc:v1:/)
    })))

  it.live("a rolled-back transaction queues nothing and delivers nothing", () =>
    inHost(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      yield* createOrders
      let rolledBackId: string | undefined
      const failure = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO orders (total) VALUES (100)`
        const enqueued = yield* WebhookQueue.enqueue({
          destination: { url: receiver.url(), secret: SECRET },
          eventType: "order.created",
          payload: { total: 100 }
        })
        rolledBackId = enqueued.id
        // Visible inside the transaction...
        expect((yield* queueRows).map((row) => row.id)).toEqual([enqueued.id])
        return yield* Effect.fail("payment declined" as const)
      })).pipe(Effect.flip)
      expect(failure).toBe("payment declined")
      expect(rolledBackId).toBeDefined()
      // ...and gone with the business write.
      expect(yield* queueRows).toEqual([])
      expect(yield* sql`SELECT * FROM orders`).toEqual([])

      // The worker is live: a webhook committed afterwards is delivered, and it is the only one.
      const sentinel = yield* WebhookQueue.enqueue({
        destination: { url: receiver.url(), secret: SECRET },
        eventType: "order.sentinel",
        payload: {}
      })
      yield* eventually(rowsWithStatus("delivered").pipe(Effect.map((rows) => rows.length === 1 ? rows : undefined)), "sentinel delivered")
      expect(receiver.requests.map((request) => request.headers["webhook-id"])).toEqual([sentinel.id])
    })))

  it.live("a repeated idempotency key returns the first delivery's id with duplicate: true and delivers once", () =>
    inHost(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      const request = {
        destination: { url: receiver.url(), secret: SECRET },
        eventType: "order.created",
        payload: { orderId: 1 },
        idempotencyKey: "order-1"
      }
      const first = yield* sql.withTransaction(WebhookQueue.enqueue(request))
      const again = yield* sql.withTransaction(WebhookQueue.enqueue({ ...request, payload: { orderId: 1, retried: true } }))
      expect(first.duplicate).toBe(false)
      expect(again).toEqual({ id: first.id, duplicate: true })

      // The key is per destination: another URL with the same key is a new delivery.
      const elsewhere = yield* WebhookQueue.enqueue({ ...request, destination: { url: receiver.url("/other"), secret: SECRET } })
      expect(elsewhere.duplicate).toBe(false)
      // Within one batch, the second use of a key is a duplicate of the first.
      const batch = yield* WebhookQueue.enqueueMany([
        { ...request, idempotencyKey: "order-2" },
        { ...request, idempotencyKey: "order-2" }
      ])
      expect(batch[0]!.duplicate).toBe(false)
      expect(batch[1]).toEqual({ id: batch[0]!.id, duplicate: true })

      yield* eventually(rowsWithStatus("delivered").pipe(Effect.map((rows) => rows.length === 3 ? rows : undefined)), "3 delivered")
      yield* Effect.sleep(Duration.millis(400))
      expect(receiver.requests).toHaveLength(3)
      const first1 = receiver.requests.find((r) => r.headers["webhook-id"] === first.id)!
      expect(JSON.parse(first1.body).data).toEqual({ orderId: 1 })
    })))

  it.live("by registered endpoint: delivered with the endpoint's secret; typed errors for unknown, disabled, unsubscribed", () =>
    inHost(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      yield* createOrders
      const endpointSecret = "partner-plain-secret"
      const endpointId = yield* insertEndpoint({ url: receiver.url("/ep"), secret: endpointSecret, eventTypes: ["order.created"] })
      const disabledId = yield* insertEndpoint({ url: receiver.url("/off"), secret: "x", enabled: false })
      const unknownId = "0190f1d2-0000-7000-8000-000000000000"
      const base = { eventType: "order.created", payload: { n: 1 } }

      const notFound = yield* WebhookQueue.enqueue({ ...base, destination: { endpointId: unknownId } }).pipe(Effect.flip)
      expect(notFound._tag).toBe("EndpointNotFound")
      const disabled = yield* WebhookQueue.enqueue({ ...base, destination: { endpointId: disabledId } }).pipe(Effect.flip)
      expect(disabled).toMatchObject({ _tag: "EndpointIsDisabled", endpointId: disabledId, reason: "disabled by test" })
      const unsubscribed = yield* WebhookQueue.enqueue({ ...base, eventType: "order.refunded", destination: { endpointId } }).pipe(Effect.flip)
      expect(unsubscribed).toMatchObject({ _tag: "EventTypeNotSubscribed", eventType: "order.refunded", subscribed: ["order.created"] })
      const badUrl = yield* WebhookQueue.enqueue({ ...base, destination: { url: "ftp://example.com/x", secret: SECRET } }).pipe(Effect.flip)
      expect(badUrl).toMatchObject({ _tag: "InvalidEnqueueRequest", field: "url" })
      const badType = yield* WebhookQueue.enqueue({ ...base, eventType: "has space", destination: { endpointId } }).pipe(Effect.flip)
      expect(badType).toMatchObject({ _tag: "InvalidEnqueueRequest", field: "eventType" })

      // A typed error leaves the host's transaction usable: it can carry on and commit.
      const committed = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO orders (total) VALUES (7)`
        const skipped = yield* WebhookQueue.enqueue({ ...base, destination: { endpointId: unknownId } }).pipe(
          Effect.catchTag("EndpointNotFound", () => Effect.succeed(null))
        )
        expect(skipped).toBeNull()
        return yield* WebhookQueue.enqueue({ ...base, destination: { endpointId } })
      }))
      // A batch with one bad request queues none of it.
      const batchError = yield* WebhookQueue.enqueueMany([
        { ...base, destination: { endpointId } },
        { ...base, destination: { endpointId: disabledId } }
      ]).pipe(Effect.flip)
      expect(batchError._tag).toBe("EndpointIsDisabled")

      const [request] = yield* receiver.waitForRequests(1)
      expect(request!.path).toBe("/ep")
      expect(request!.headers["webhook-id"]).toBe(committed.id)
      expect(verifyWebhook(endpointSecret, request!.headers, request!.body).data).toEqual({ n: 1 })
      // A non-whsec secret is its raw UTF-8 bytes for the stock library.
      new Webhook(Buffer.from(endpointSecret), { format: "raw" }).verify(request!.body, request!.headers as Record<string, string>)
      const rows = yield* queueRows
      expect(rows.map((row) => row.endpoint_id)).toEqual([endpointId])
      expect((yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM orders`)[0]!.n).toBe(1)
    })))

  it.live("max attempts, delay and user id are stored; deliverAfter holds the delivery back", () =>
    inHost(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const destination = { url: receiver.url(), secret: SECRET }
      const later = yield* WebhookQueue.enqueue({ destination, eventType: "a.b", payload: 1, maxAttempts: 9, deliverAfter: "1 hour" })
      const at = yield* WebhookQueue.enqueue({ destination, eventType: "a.b", payload: 2, deliverAfter: new Date(Date.now() + 7_200_000) })
      const dflt = yield* WebhookQueue.enqueue({ destination, eventType: "a.b", payload: 3, userId: "u9" })
      const invalid = yield* WebhookQueue.enqueue({ destination, eventType: "a.b", payload: 4, maxAttempts: 0 }).pipe(Effect.flip)
      expect(invalid).toMatchObject({ _tag: "InvalidEnqueueRequest", field: "maxAttempts" })

      yield* eventually(rowsWithStatus("delivered").pipe(Effect.map((rows) => rows.length === 1 ? rows : undefined)), "delivered")
      const rows = new Map((yield* queueRows).map((row) => [row.id, row]))
      expect(rows.get(later.id)).toMatchObject({ status: "pending", max_attempts: 9 })
      expect(rows.get(later.id)!.due_in_s).toBeGreaterThan(3500)
      expect(rows.get(at.id)!.due_in_s).toBeGreaterThan(7100)
      expect(rows.get(dflt.id)).toMatchObject({ status: "delivered", max_attempts: 5, user_id: "u9" })
      expect(receiver.requests.map((request) => request.headers["webhook-id"])).toEqual([dflt.id])
    })))

  it.live("captures the caller's span as the producer's traceparent (none outside a span, a bare transaction included; an explicit one wins)", () =>
    inHost(Effect.gen(function*() {
      const destination = { url: "http://127.0.0.1:9/never", secret: SECRET }
      const request: EnqueueRequest = { destination, eventType: "a.b", payload: {}, deliverAfter: "1 hour" }
      const { outer, enqueued } = yield* Effect.gen(function*() {
        const outer = yield* Effect.currentSpan
        const enqueued = yield* WebhookQueue.enqueue(request)
        return { outer, enqueued }
      }).pipe(Effect.withSpan("POST /orders"))
      const untraced = yield* WebhookQueue.enqueue(request)
      const explicit = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
      const given = yield* WebhookQueue.enqueue({ ...request, traceparent: explicit }).pipe(Effect.withSpan("other"))
      // withTransaction opens a span of @effect/sql's own: that alone is not the caller's span...
      const sql = yield* SqlClient.SqlClient
      const bareTransaction = yield* sql.withTransaction(WebhookQueue.enqueue(request))
      // ...while a transaction inside the caller's span is still under it.
      const { handler, inTransaction } = yield* Effect.gen(function*() {
        const handler = yield* Effect.currentSpan
        const inTransaction = yield* sql.withTransaction(WebhookQueue.enqueue(request))
        return { handler, inTransaction }
      }).pipe(Effect.withSpan("POST /refunds"))

      const rows = new Map((yield* queueRows).map((row) => [row.id, row]))
      const traceparent = rows.get(enqueued.id)!.traceparent!
      expect(traceparent).toMatch(new RegExp(`^00-${outer.traceId}-[0-9a-f]{16}-0[01]$`))
      // It names the enqueue span (a child of the caller's), not the caller's span itself.
      expect(traceparent.split("-")[2]).not.toBe(outer.spanId)
      expect(rows.get(untraced.id)!.traceparent).toBeNull()
      expect(rows.get(given.id)!.traceparent).toBe(explicit)
      expect(rows.get(bareTransaction.id)!.traceparent).toBeNull()
      expect(rows.get(inTransaction.id)!.traceparent).toMatch(new RegExp(`^00-${handler.traceId}-[0-9a-f]{16}-0[01]$`))
    })))

  it.live("works on a host PgClient that renames result columns (transformResultNames)", () =>
    inHost(
      Effect.gen(function*() {
        const receiver = yield* makeReceiver
        const endpointId = yield* insertEndpoint({ url: receiver.url(), secret: SECRET, eventTypes: ["a.b"] })
        const unsubscribed = yield* WebhookQueue.enqueue({ destination: { endpointId }, eventType: "c.d", payload: 1 }).pipe(Effect.flip)
        expect(unsubscribed).toMatchObject({ _tag: "EventTypeNotSubscribed", subscribed: ["a.b"] })
        const request = { destination: { endpointId }, eventType: "a.b", payload: 1, idempotencyKey: "k" }
        const first = yield* WebhookQueue.enqueue(request)
        expect(yield* WebhookQueue.enqueue(request)).toEqual({ id: first.id, duplicate: true })
        yield* receiver.waitForRequests(1)
      }),
      hostPg({ transformResultNames: Str.snakeToCamel, transformQueryNames: Str.camelToSnake })
    ))
})

describe("Effect API: configuration", () => {
  const provider = (entries: Record<string, string>) => ConfigProvider.fromMap(new Map(Object.entries(entries)))

  it.live("the queue reads its key from the host's ConfigProvider, ignoring the host's own LOG_LEVEL and DATABASE_URL", () =>
    Effect.gen(function*() {
      const destination = { url: "http://127.0.0.1:9/x", secret: SECRET }
      const enqueued = yield* WebhookQueue.enqueue({ destination, eventType: "a.b", payload: 1 })
      const [row] = yield* queueRows
      expect(row).toMatchObject({ id: enqueued.id, max_attempts: 7 })
    }).pipe(
      Effect.provide(WebhookQueue.layer().pipe(
        Layer.provideMerge(hostPg()),
        Layer.provide(Layer.setConfigProvider(provider({
          WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
          WEBHOOK_MAX_ATTEMPTS: "7",
          LOG_LEVEL: "trace",
          DATABASE_URL: "mysql://not-ours"
        })))
      ))
    ))

  it.live("a missing or bad setting fails the layer with ConfigInvalid naming it", () =>
    Effect.gen(function*() {
      const noKey = yield* Layer.build(WebhookQueue.layer({ config: provider({}) })).pipe(Effect.scoped, Effect.flip)
      expect(noKey).toMatchObject({ _tag: "ConfigInvalid", variable: "WEBHOOK_SECRET_ENCRYPTION_KEY" })
      const shortKey = yield* Layer.build(WebhookQueue.layer({ encryptionKey: "c2hvcnQ=" })).pipe(Effect.scoped, Effect.flip)
      expect(shortKey).toMatchObject({ _tag: "ConfigInvalid", variable: "encryptionKey" })
      const noKeyInCode = yield* Layer.build(WebhookWorker.layer({ settings: { batchSize: 5 } })).pipe(Effect.scoped, Effect.flip)
      expect(noKeyInCode).toMatchObject({ _tag: "ConfigInvalid", variable: "encryptionKey" })
      const badBatch = yield* Layer.build(WebhookWorker.layer({ settings: { ...fastWorker, batchSize: 0 } })).pipe(Effect.scoped, Effect.flip)
      expect(badBatch).toMatchObject({ _tag: "ConfigInvalid", variable: "batchSize" })
      const badLease = yield* Layer.build(WebhookWorker.layer({ settings: { ...fastWorker, lease: "1 second" } })).pipe(Effect.scoped, Effect.flip)
      expect(badLease).toMatchObject({ _tag: "ConfigInvalid", variable: "lease" })
      expect(badLease.message).not.toMatch(/[A-Z]{2,}_[A-Z_]+/)
      // A cross-check fails on the option the host did not set, named as an option all the same.
      const slowRetry = yield* Layer.build(WebhookWorker.layer({ settings: { encryptionKey: TEST_KEY, retryBaseDelay: "7 hours" } })).pipe(Effect.scoped, Effect.flip)
      expect(slowRetry).toMatchObject({ _tag: "ConfigInvalid", variable: "retryMaxDelay" })
      expect(slowRetry.message).toBe("retryMaxDelay: must be at least retryBaseDelay (25200s), got 21600s")
      // From a provider, the variable is named; options overlay the provider.
      const fromProvider = yield* Layer.build(WebhookWorker.layer({
        config: provider({ WORKER_BATCH_SIZE: "lots" }),
        settings: { encryptionKey: TEST_KEY }
      })).pipe(Effect.scoped, Effect.flip)
      expect(fromProvider).toMatchObject({ _tag: "ConfigInvalid", variable: "WORKER_BATCH_SIZE" })
    }).pipe(Effect.provide(hostPg())))

  it.live("settings in code are overlaid on the defaults only (the environment is not read)", () =>
    Effect.gen(function*() {
      const fromCode = yield* resolve({ settings: { encryptionKey: TEST_KEY, batchSize: 3, pollInterval: "250 millis" } }).pipe(
        Effect.withConfigProvider(provider({ WORKER_BATCH_SIZE: "99", MAX_CONCURRENT_DELIVERIES: "7" }))
      )
      expect(fromCode).toMatchObject({ batchSize: 3, pollIntervalMs: 250, maxConcurrentDeliveries: 50 })
      expect(Option.isSome(fromCode.encryptionKey)).toBe(true)
      const overlaid = yield* resolve({ config: provider({ WORKER_BATCH_SIZE: "99", MAX_CONCURRENT_DELIVERIES: "7" }), settings: { batchSize: 3 } })
      expect(overlaid).toMatchObject({ batchSize: 3, maxConcurrentDeliveries: 7 })
    }))
})
