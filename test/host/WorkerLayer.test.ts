import { it } from "@effect/vitest"
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Layer, ManagedRuntime, Redacted } from "effect"
import * as Prom from "prom-client"
import { describe, expect } from "vitest"
import { WebhookQueue, WebhookWorker, type WorkerSettings } from "../../src/index.js"
import { makeReceiver } from "../utils/Receiver.js"
import { testDatabase } from "../utils/TestDatabase.js"
import { eventually } from "../utils/WorkerHarness.js"
import { fastWorker, queueRows, TEST_KEY } from "./fixtures.js"

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

/**
 * A host runtime the way an app builds one (ManagedRuntime over its layers), on a database that
 * outlives it, so what the worker left behind can be read after the runtime is disposed.
 */
const hostRuntime = (url: string, settings: WorkerSettings) =>
  ManagedRuntime.make(
    Layer.mergeAll(WebhookQueue.layer({ encryptionKey: TEST_KEY }), WebhookWorker.layer({ settings })).pipe(
      Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections: 4 }))
    )
  )

/** Reads the queue through a client of its own (the host's is gone by then). */
const rowsOf = (url: string) =>
  queueRows.pipe(Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 })), Effect.orDie)

describe("the worker layer in a host runtime", () => {
  it.live("closing the host's scope lets an in-flight delivery finish and record its result", () =>
    Effect.gen(function*() {
      const { url } = yield* testDatabase
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, body: "slow ok", delayMs: 1200 })
      const runtime = hostRuntime(url, { ...fastWorker, shutdownGracePeriod: "10 seconds" })
      const inFlight = yield* Effect.promise(() =>
        runtime.runPromise(WebhookQueue.enqueue({ destination: { url: receiver.url(), secret: SECRET }, eventType: "order.created", payload: 1 }))
      )
      const later = yield* Effect.promise(() =>
        runtime.runPromise(WebhookQueue.enqueue({ destination: { url: receiver.url(), secret: SECRET }, eventType: "order.created", payload: 2, deliverAfter: "1 hour" }))
      )
      yield* receiver.waitForRequests(1)

      const started = Date.now()
      yield* Effect.promise(() => runtime.dispose())
      // It waited for the response rather than cutting the delivery off.
      expect(Date.now() - started).toBeGreaterThan(700)

      const rows = new Map((yield* rowsOf(url)).map((row) => [row.id, row]))
      expect(rows.get(inFlight.id)).toMatchObject({ status: "delivered", attempt_count: 1, locked_by: null })
      expect(rows.get(later.id)).toMatchObject({ status: "pending", attempt_count: 0, locked_by: null })
      expect([...rows.values()].filter((row) => row.status === "processing")).toEqual([])
      expect(receiver.requests).toHaveLength(1)
    }).pipe(Effect.scoped))

  it.live("a delivery still running when the grace period ends is handed back, not left processing", () =>
    Effect.gen(function*() {
      const { url } = yield* testDatabase
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 1900 })
      const runtime = hostRuntime(url, { ...fastWorker, shutdownGracePeriod: "200 millis" })
      const enqueued = yield* Effect.promise(() =>
        runtime.runPromise(WebhookQueue.enqueue({ destination: { url: receiver.url(), secret: SECRET }, eventType: "order.created", payload: 1 }))
      )
      yield* receiver.waitForRequests(1)
      const started = Date.now()
      yield* Effect.promise(() => runtime.dispose())
      expect(Date.now() - started).toBeLessThan(1500)

      const [row] = yield* rowsOf(url)
      expect(row).toMatchObject({ id: enqueued.id, status: "pending", locked_by: null, attempt_count: 1 })
      expect(row!.due_in_s).toBeLessThanOrEqual(0)
    }).pipe(Effect.scoped))

  it.live("opt-in observability: metrics land in the host's registry, spans in the host's OTel SDK", () =>
    Effect.gen(function*() {
      const { url } = yield* testDatabase
      const receiver = yield* makeReceiver
      const registry = new Prom.Registry()
      const exporter = new InMemorySpanExporter()
      const host = Layer.mergeAll(
        WebhookQueue.layer({ encryptionKey: TEST_KEY }),
        WebhookWorker.layer({ settings: fastWorker, metrics: { registry, queueStatsInterval: "100 millis" }, tracing: true })
      ).pipe(
        Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections: 4 })),
        Layer.provide(NodeSdk.layer(() => ({ resource: { serviceName: "host-app" }, spanProcessor: new SimpleSpanProcessor(exporter) })))
      )
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const enqueued = yield* sql.withTransaction(
          WebhookQueue.enqueue({ destination: { url: receiver.url(), secret: SECRET }, eventType: "order.created", payload: { n: 1 } })
        ).pipe(Effect.withSpan("POST /orders", { kind: "server" }))
        yield* eventually(
          Effect.map(queueRows, (rows) => rows[0]?.status === "delivered" ? rows : undefined),
          "delivered"
        )
        // Spans are read inside the SDK layer's scope: its shutdown empties the exporter.
        const spans = yield* eventually(
          Effect.sync(() => {
            const spans = exporter.getFinishedSpans()
            return spans.some((span) => span.name === "webhook.deliver") ? spans : undefined
          }),
          "delivery span"
        )
        const request = spans.find((span) => span.name === "POST /orders")!
        const producer = spans.find((span) => span.name === "WebhookQueue.enqueueMany")!
        const deliver = spans.find((span) => span.name === "webhook.deliver")!
        expect(producer.spanContext().traceId).toBe(request.spanContext().traceId)
        expect(deliver.links.map((link) => link.context.spanId)).toContain(producer.spanContext().spanId)
        expect(deliver.attributes["webhook.id"]).toBe(enqueued.id)
        // The receiver is told the attempt's trace.
        const [received] = yield* receiver.waitForRequests(1)
        expect(received!.headers.traceparent).toContain(deliver.spanContext().traceId)

        const delivered = yield* Effect.promise(() => registry.getSingleMetric("webhooks_delivered_total")!.get())
        expect(delivered.values.reduce((sum, value) => sum + value.value, 0)).toBe(1)
        yield* eventually(
          Effect.promise(async () => {
            const sizes = await registry.getSingleMetric("webhook_queue_size")!.get()
            return sizes.values.some((value) => value.labels.status === "delivered" && value.value === 1) || undefined
          }),
          "queue size gauge"
        )
      }).pipe(Effect.provide(host))
    }).pipe(Effect.scoped))
})
