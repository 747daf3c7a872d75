/**
 * An Effect HTTP app that takes orders and tells a partner about each one with an
 * `order.created` webhook, written in the same database transaction as the order, and runs the
 * webhook worker in its own process. See README.md beside this file for how to run it.
 *
 * In your app the import is `from "webhook-worker"`; the example imports the source so it runs
 * from a checkout without a build.
 */
import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Config, Data, Effect, Layer, Redacted, Schema } from "effect"
import { createServer } from "node:http"
import * as Prom from "prom-client"
import { type Destination, WebhookQueue, WebhookWorker } from "../../src/index.js"

// == the app's own database, config and metrics registry

const PgLive = PgClient.layerConfig({ url: Config.redacted("DATABASE_URL"), maxConnections: Config.succeed(8) })

/** The app's schema (its own migration tool would do this). */
const OrdersTableLive = Layer.effectDiscard(
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`CREATE TABLE IF NOT EXISTS example_orders (
      id serial PRIMARY KEY,
      customer text NOT NULL,
      total_cents integer NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now()
    )`)
)

/** Where `order.created` goes: a registered endpoint, or a URL and its signing secret. Read at start. */
class Partner extends Effect.Service<Partner>()("example/Partner", {
  effect: Config.orElse(
    Config.map(Config.string("PARTNER_ENDPOINT_ID"), (endpointId): Destination => ({ endpointId })),
    () =>
      Config.map(
        Config.all({ url: Config.string("PARTNER_URL"), secret: Config.redacted("PARTNER_SECRET") }),
        ({ secret, url }): Destination => ({ url, secret: Redacted.value(secret) })
      )
  ).pipe(Effect.map((destination) => ({ destination })))
}) {}

/** The registry the app already serves on /metrics; the worker registers its metrics into it. */
const registry = new Prom.Registry()

// == the order endpoint

const NewOrder = Schema.Struct({
  customer: Schema.NonEmptyString,
  totalCents: Schema.Int,
  /** Simulates a failure after the writes, to show that the webhook rolls back with the order. */
  declinePayment: Schema.optionalWith(Schema.Boolean, { default: () => false })
})

class PaymentDeclined extends Data.TaggedError("PaymentDeclined")<{ readonly orderId: number }> {}

const createOrder = Effect.gen(function*() {
  const order = yield* HttpServerRequest.schemaBodyJson(NewOrder)
  const partner = yield* Partner
  const sql = yield* SqlClient.SqlClient
  const created = yield* sql.withTransaction(
    Effect.gen(function*() {
      const [row] = yield* sql<{ id: number }>`
        INSERT INTO example_orders (customer, total_cents) VALUES (${order.customer}, ${order.totalCents}) RETURNING id`
      const webhook = yield* WebhookQueue.enqueue({
        destination: partner.destination,
        eventType: "order.created",
        payload: { orderId: row!.id, customer: order.customer, totalCents: order.totalCents },
        // A retried request for the same order cannot queue a second webhook.
        idempotencyKey: `order-${row!.id}-created`
      })
      if (order.declinePayment) return yield* new PaymentDeclined({ orderId: row!.id })
      return { orderId: row!.id, webhookId: webhook.id }
    })
  )
  return yield* HttpServerResponse.json(created, { status: 201 })
}).pipe(
  Effect.catchTags({
    PaymentDeclined: (error) => HttpServerResponse.json({ error: "payment declined", orderId: error.orderId }, { status: 402 }),
    ParseError: (error) => HttpServerResponse.json({ error: error.message }, { status: 400 }),
    RequestError: (error) => HttpServerResponse.json({ error: error.message }, { status: 400 }),
    // The partner setup is wrong (e.g. its endpoint was disabled): the order is not taken.
    EndpointNotFound: (error) => HttpServerResponse.json({ error: error.message }, { status: 503 }),
    EndpointIsDisabled: (error) => HttpServerResponse.json({ error: error.message }, { status: 503 }),
    EventTypeNotSubscribed: (error) => HttpServerResponse.json({ error: error.message }, { status: 503 }),
    InvalidEnqueueRequest: (error) => HttpServerResponse.json({ error: error.message }, { status: 500 })
  })
)

const metrics = Effect.promise(() => registry.metrics()).pipe(
  Effect.flatMap((text) => HttpServerResponse.text(text, { contentType: registry.contentType }))
)

const HttpLive = HttpRouter.empty.pipe(
  HttpRouter.post("/orders", createOrder),
  HttpRouter.get("/metrics", metrics),
  HttpServer.serve(),
  HttpServer.withLogAddress,
  Layer.provide(NodeHttpServer.layerConfig(createServer, {
    port: Config.integer("PORT").pipe(Config.withDefault(3000)),
    host: Config.string("HOST").pipe(Config.withDefault("127.0.0.1"))
  }))
)

// == webhooks: the queue on the app's SqlClient, and the worker in-process

const WebhooksLive = Layer.mergeAll(
  // WEBHOOK_SECRET_ENCRYPTION_KEY (and WEBHOOK_MAX_ATTEMPTS) from the environment.
  WebhookQueue.layer(),
  // Worker settings from the environment too (SPEC.md variables, e.g. SHUTDOWN_GRACE_PERIOD);
  // pass `settings: { ... }` to set them in code instead.
  WebhookWorker.layer({ metrics: { registry } })
)

const MainLive = HttpLive.pipe(
  Layer.provide(Layer.merge(WebhooksLive, Partner.Default)),
  Layer.provide(OrdersTableLive),
  Layer.provide(PgLive)
)

// SIGTERM/SIGINT close the runtime's scope: the server stops, the worker finishes its in-flight
// deliveries (up to SHUTDOWN_GRACE_PERIOD), then the pool closes.
NodeRuntime.runMain(Layer.launch(MainLive))
