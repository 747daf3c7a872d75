import { it } from "@effect/vitest"
import type { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { SpanKind } from "@opentelemetry/api"
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base"
import { Effect, Layer, Option, type Scope } from "effect"
import { randomBytes } from "node:crypto"
import { describe, expect } from "vitest"
import * as Log from "../../src/observability/Log.js"
import * as Metrics from "../../src/observability/Metrics.js"
import * as Telemetry from "../../src/observability/TelemetrySdk.js"
import * as TelemetryConfig from "../../src/observability/Telemetry.js"
import { clientSpanAttributes } from "../../src/http/DeliveryHttp.js"
import { TraceDeliveries } from "../../src/worker/Worker.js"
import { spawnCli } from "../utils/Cli.js"
import { makeModuleProbe } from "../utils/ModuleProbe.js"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg, testDatabase } from "../utils/TestDatabase.js"
import { eventually, statusIs, TEST_KEY } from "../utils/WorkerHarness.js"
import { enqueue, makeCollector, start, waitFor, workerLayer } from "./support.js"

const scoped = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

const hex = (bytes: number) => randomBytes(bytes).toString("hex")
const metrics = () => Metrics.make({ tenantLabels: true, processMetrics: false })

const SECRET = "whsec_c2VjcmV0LW5ldmVyLWluLXRyYWNlcw=="
const PASSWORD = "pa55-in-userinfo"
const TOKEN = "T0KEN-in-the-path"

describe("delivery traces", () => {
  it.live("each attempt is a span under the producer's, with the HTTP call as its child; the receiver's traceparent names it", () =>
    scoped(Effect.gen(function*() {
      const exporter = new InMemorySpanExporter()
      const logs: Array<string> = []
      yield* Effect.gen(function*() {
        const receiver = yield* makeReceiver
        let calls = 0
        receiver.respond = (request) => (request.path.startsWith("/hooks") && ++calls === 1 ? { status: 503 } : { status: 200 })
        const destination = receiver.url(`/hooks/${TOKEN}?key=${TOKEN}`).replace("http://", `http://user:${PASSWORD}@`)

        // The host app's request handler: its span is active when it enqueues.
        const producer = yield* Effect.gen(function*() {
          const span = yield* Effect.currentSpan
          const id = yield* enqueue({ url: destination, secret: SECRET, traceparent: `00-${span.traceId}-${span.spanId}-01` })
          return { id, traceId: span.traceId, spanId: span.spanId }
        }).pipe(Effect.withSpan("POST /checkout", { kind: "server" }))
        const plain = yield* enqueue({ url: receiver.url("/plain") })

        const { stop } = yield* start(workerLayer({ metrics: metrics() }))
        yield* eventually(statusIs(producer.id, "delivered"), "linked delivery")
        yield* eventually(statusIs(plain, "delivered"), "plain delivery")
        yield* stop

        // Read inside the layer's scope: the in-memory exporter forgets on shutdown.
        const spans = exporter.getFinishedSpans()
        const deliveries = spans.filter((s) => s.name === "webhook.deliver" && s.attributes["webhook.id"] === producer.id)
          .sort((a, b) => Number(a.attributes["webhook.attempt"]) - Number(b.attributes["webhook.attempt"]))
        expect(deliveries.map((s) => s.attributes["webhook.attempt"])).toEqual([1, 2])
        const host = `127.0.0.1:${receiver.port}`
        for (const span of deliveries) {
          expect(span.kind).toBe(SpanKind.PRODUCER)
          // In the producer's trace, under its span, and linked to it.
          expect(span.spanContext().traceId).toBe(producer.traceId)
          expect(span.parentSpanContext?.spanId).toBe(producer.spanId)
          expect(span.links.map((l) => [l.context.traceId, l.context.spanId, l.attributes?.["webhook.link"]])).toEqual([
            [producer.traceId, producer.spanId, "producer"]
          ])
          expect(span.attributes).toMatchObject({
            "webhook.id": producer.id,
            "webhook.event_type": "order.created",
            "webhook.max_attempts": 5,
            "server.address": host
          })
          expect(span.attributes).not.toHaveProperty("webhook.endpoint_id")
          expect(Object.values(span.attributes)).not.toContain("undefined")
          expect(resourceName(span)).toBe("webhook-worker-test")
        }
        const [first, second] = deliveries as [ReadableSpan, ReadableSpan]
        expect(first.attributes).toMatchObject({ "http.response.status_code": 503, "webhook.outcome": "failed", "webhook.reason": "http_5xx" })
        expect(typeof first.attributes["webhook.next_retry_in_ms"]).toBe("number")
        expect(Date.parse(String(first.attributes["webhook.next_retry_at"]))).toBeGreaterThan(Date.now() - 60_000)
        expect(second.attributes).toMatchObject({ "http.response.status_code": 200, "webhook.outcome": "delivered", "webhook.reason": "delivered" })
        expect(second.attributes).not.toHaveProperty("webhook.next_retry_at")

        // The HTTP call is a client span under each attempt.
        for (const delivery of deliveries) {
          const calls = spans.filter((s) => s.parentSpanContext?.spanId === delivery.spanContext().spanId && s.name.startsWith("http.client"))
          expect(calls).toHaveLength(1)
          const call = calls[0]!
          expect(call.name).toBe("http.client POST")
          expect(call.kind).toBe(SpanKind.CLIENT)
          expect(call.spanContext().traceId).toBe(producer.traceId)
          expect(call.attributes["http.response.status_code"]).toBe(delivery.attributes["http.response.status_code"])
          // The destination's path, query and password never reach the trace backend.
          expect(call.attributes["url.full"]).toBe(`http://${host}/…`)
          expect(call.attributes).not.toHaveProperty("url.path")
          expect(call.attributes).not.toHaveProperty("url.query")
        }

        // Results are written in batches: each batch write is a `webhook.record` span linked to
        // every attempt it records, with the SQL as its child.
        for (const delivery of deliveries) {
          const records = spans.filter((s) =>
            s.name === "webhook.record" && s.links.some((l) => l.context.spanId === delivery.spanContext().spanId)
          )
          expect(records).toHaveLength(1)
          expect(spans.some((s) => s.name === "sql.execute" && s.parentSpanContext?.spanId === records[0]!.spanContext().spanId)).toBe(true)
        }

        // The receiver got a traceparent naming each attempt's exported span.
        const hooks = receiver.requests.filter((r) => r.path.startsWith("/hooks"))
        expect(hooks.map((r) => r.headers.traceparent)).toEqual(
          deliveries.map((s) => `00-${s.spanContext().traceId}-${s.spanContext().spanId}-01`)
        )
        expect(hooks.every((r) => r.headers.b3 === undefined)).toBe(true)

        // A row without producer context gets a trace of its own.
        const own = spans.find((s) => s.name === "webhook.deliver" && s.attributes["webhook.id"] === plain)!
        expect(own.parentSpanContext).toBeUndefined()
        expect(own.links).toEqual([])
        expect(own.spanContext().traceId).not.toBe(producer.traceId)

        // The producer's own span and its SQL are exported; background SQL (claims, polls) is not.
        expect(spans.some((s) => s.name === "POST /checkout" && s.spanContext().spanId === producer.spanId)).toBe(true)
        expect(spans.some((s) => s.name === "sql.execute" && s.parentSpanContext?.spanId === producer.spanId)).toBe(true)
        expect(spans.filter((s) => s.name.startsWith("sql.") && s.parentSpanContext === undefined)).toEqual([])

        const everything = JSON.stringify(spans.map((s) => ({ a: s.attributes, e: s.events, l: s.links, st: s.status, n: s.name })))
        for (const secret of [SECRET, PASSWORD, TOKEN, SECRET.slice(6)]) expect(everything).not.toContain(secret)

        // Each attempt's log line carries its trace and span ids.
        const lines = logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((l) => l.msg === "Delivering webhook" && l.delivery_id === producer.id)
        expect(lines.map((l) => [l.attempt, l.trace_id, l.span_id])).toEqual(
          deliveries.map((s) => [s.attributes["webhook.attempt"], s.spanContext().traceId, s.spanContext().spanId])
        )
      }).pipe(Effect.provide(Layer.mergeAll(
        Telemetry.layerWith({ serviceName: "webhook-worker-test", exporter, processor: "simple" }),
        Log.layer("json", new Log.LogThreshold("INFO"), { write: (line) => logs.push(line) })
      )))
    })))

  it.live("a producer's not-sampled traceparent (-00) is honoured: its attempts are not recorded, and the receiver is told -00 in the producer's trace", () =>
    scoped(Effect.gen(function*() {
      const exporter = new InMemorySpanExporter()
      yield* Effect.gen(function*() {
        const receiver = yield* makeReceiver
        const unsampled = { traceId: hex(16), spanId: hex(8) }
        const sampled = { traceId: hex(16), spanId: hex(8) }
        const quiet = yield* enqueue({ url: receiver.url("/quiet"), traceparent: `00-${unsampled.traceId}-${unsampled.spanId}-00` })
        const loud = yield* enqueue({ url: receiver.url("/loud"), traceparent: `00-${sampled.traceId}-${sampled.spanId}-01` })
        const { stop } = yield* start(workerLayer({ metrics: metrics() }))
        for (const id of [quiet, loud]) yield* eventually(statusIs(id, "delivered"), "delivered")
        yield* stop
        const spans = exporter.getFinishedSpans()
        const traceIds = new Set(spans.map((span) => span.spanContext().traceId))
        expect(traceIds.has(unsampled.traceId)).toBe(false)
        expect(spans.some((span) => span.attributes["webhook.id"] === quiet)).toBe(false)
        expect(spans.some((span) => span.name === "webhook.deliver" && span.attributes["webhook.id"] === loud)).toBe(true)
        const header = (path: string) => String(receiver.requests.find((r) => r.path === path)!.headers.traceparent)
        expect(header("/quiet")).toMatch(new RegExp(`^00-${unsampled.traceId}-[0-9a-f]{16}-00$`))
        expect(header("/loud")).toMatch(new RegExp(`^00-${sampled.traceId}-[0-9a-f]{16}-01$`))
      }).pipe(Effect.provide(Telemetry.layerWith({ serviceName: "webhook-worker-test", exporter, processor: "simple" })))
    })))

  it("the http.client span names the server's port, the scheme's default when the URL gives none, and never the path", () => {
    expect(clientSpanAttributes(new URL("https://hooks.example.com/in/T0KEN?k=1"))).toEqual({
      "http.request.method": "POST",
      "server.address": "hooks.example.com",
      "server.port": 443,
      "url.scheme": "https",
      "url.full": "https://hooks.example.com/…"
    })
    expect(clientSpanAttributes(new URL("http://hooks.example.com/in"))["server.port"]).toBe(80)
    expect(clientSpanAttributes(new URL("http://10.0.0.7:8080/in"))).toMatchObject({ "server.port": 8080, "url.full": "http://10.0.0.7:8080/…" })
  })

  it.live("spans are exported over OTLP/HTTP to a collector, and the receiver's traceparent is one of them", () =>
    scoped(Effect.gen(function*() {
      const collector = yield* makeCollector
      const receiver = yield* makeReceiver
      const producer = { traceId: hex(16), spanId: hex(8) }
      const id = yield* Effect.gen(function*() {
        const id = yield* enqueue({ url: receiver.url(), traceparent: `00-${producer.traceId}-${producer.spanId}-01` })
        const { stop } = yield* start(workerLayer({ metrics: metrics() }))
        yield* eventually(statusIs(id, "delivered"), "delivered")
        yield* stop
        return id
      }).pipe(Effect.provide(TelemetryConfig.layer(
        { otelEndpoint: Option.some(`${collector.url}/`), otelServiceName: "ww-otlp-e2e" },
        2,
        {}
      )))
      // Closing the layer flushed the batch processor.
      const spans = yield* waitFor(
        Effect.sync(() => {
          const all = collector.spans()
          return all.some((s) => s.span.name === "webhook.deliver") ? all : undefined
        }),
        "the collector to receive the delivery span",
        10_000
      )
      expect(collector.paths()).toEqual(expect.arrayContaining(["/v1/traces"]))
      const deliver = spans.find((s) => s.span.name === "webhook.deliver")!
      expect(deliver.resource["service.name"]).toBe("ww-otlp-e2e")
      expect(deliver.resource["service.instance.id"]).toMatch(/:2$/)
      expect(deliver.attributes["webhook.id"]).toBe(id)
      expect(deliver.span.traceId).toBe(producer.traceId)
      expect(deliver.span.parentSpanId).toBe(producer.spanId)
      expect(deliver.span.links?.[0]?.spanId).toBe(producer.spanId)
      expect(receiver.requests[0]!.headers.traceparent).toBe(`00-${deliver.span.traceId}-${deliver.span.spanId}-01`)
      const call = spans.find((s) => s.span.name === "http.client POST")!
      expect(call.span.parentSpanId).toBe(deliver.span.spanId)
    })))

  it.live("without OTEL_EXPORTER_OTLP_ENDPOINT nothing is traced and receivers get no trace headers", () =>
    scoped(Effect.gen(function*() {
      expect(TelemetryConfig.isEnabled({ otelEndpoint: Option.none() }, {})).toBe(false)
      expect(TelemetryConfig.isEnabled({ otelEndpoint: Option.some("http://127.0.0.1:4318") }, { OTEL_SDK_DISABLED: "true" })).toBe(false)
      expect(TelemetryConfig.isEnabled({ otelEndpoint: Option.some("http://127.0.0.1:4318") }, {})).toBe(true)
      expect(TelemetryConfig.tracesUrl("http://collector:4318/")).toBe("http://collector:4318/v1/traces")

      const receiver = yield* makeReceiver
      const logs: Array<string> = []
      yield* Effect.gen(function*() {
        expect(yield* TraceDeliveries).toBe(false)
        const id = yield* enqueue({ url: receiver.url(), traceparent: `00-${hex(16)}-${hex(8)}-01` })
        const { stop } = yield* start(workerLayer({ metrics: metrics() }))
        yield* eventually(statusIs(id, "delivered"), "delivered")
        yield* stop
      }).pipe(Effect.provide(Layer.mergeAll(
        TelemetryConfig.layer({ otelEndpoint: Option.none(), otelServiceName: "unused" }, 1, {}),
        Log.layer("json", new Log.LogThreshold("INFO"), { write: (line) => logs.push(line) })
      )))
      expect(receiver.requests[0]!.headers.traceparent).toBeUndefined()
      expect(receiver.requests[0]!.headers.b3).toBeUndefined()
      const line = logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === "Delivering webhook")!
      expect(line.trace_id).toBeUndefined()
    })))

  it.live("a worker process without OTEL_EXPORTER_OTLP_ENDPOINT never loads the OpenTelemetry SDK; with the variable set it does", () =>
    Effect.gen(function*() {
      const { url } = yield* testDatabase
      const collector = yield* makeCollector
      const sdk = /\/node_modules\/(@opentelemetry\/(sdk-trace-base|sdk-trace-node|exporter-trace-otlp-http|resources)|@effect\/opentelemetry)\//
      // The built CLI (`npm test` builds dist/ first), started, then stopped once it runs.
      const modulesOfRun = (env: Record<string, string>) =>
        Effect.gen(function*() {
          const probe = makeModuleProbe()
          const worker = yield* spawnCli(["run"], {
            DATABASE_URL: url,
            WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
            METRICS_ENABLED: "false",
            ...probe.env,
            ...env
          })
          yield* worker.waitForLine(/Worker started/)
          yield* worker.signal("SIGTERM")
          expect(yield* worker.exited).toBe(0)
          return probe.loaded()
        }).pipe(Effect.scoped)

      const untraced = yield* modulesOfRun({})
      // The probe sees the worker's own modules...
      expect(untraced.some((u) => u.endsWith("/dist/observability/Telemetry.js"))).toBe(true)
      expect(untraced.some((u) => u.endsWith("/dist/worker/Worker.js"))).toBe(true)
      // ...and no part of the SDK, nor the module that imports it.
      expect(untraced.filter((u) => sdk.test(u) || u.endsWith("/dist/observability/TelemetrySdk.js"))).toEqual([])

      const traced = yield* modulesOfRun({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url })
      expect(traced.some((u) => u.endsWith("/dist/observability/TelemetrySdk.js"))).toBe(true)
      for (const entry of ["@effect/opentelemetry", "@opentelemetry/sdk-trace-base", "@opentelemetry/exporter-trace-otlp-http"]) {
        expect(traced.some((u) => u.includes(`/node_modules/${entry}/`)), entry).toBe(true)
      }
    }).pipe(Effect.scoped), 60_000)

  it.effect("the tracer and TraceDeliveries are put back when the telemetry layer is released", () =>
    Effect.gen(function*() {
      const before = yield* Effect.tracer
      const inside = yield* Effect.all([Effect.tracer, TraceDeliveries]).pipe(
        Effect.provide(Telemetry.layerWith({ serviceName: "scoped", exporter: new InMemorySpanExporter(), processor: "simple" }))
      )
      expect(inside[0]).not.toBe(before)
      expect(inside[1]).toBe(true)
      expect(yield* Effect.tracer).toBe(before)
      expect(yield* TraceDeliveries).toBe(false)
    }))

  it("OTEL_TRACES_SAMPLER is honoured", () => {
    expect(Telemetry.samplerFromEnv({}).toString()).toMatch(/ParentBased\{root=AlwaysOnSampler/)
    expect(Telemetry.samplerFromEnv({ OTEL_TRACES_SAMPLER: "always_off" }).toString()).toBe("AlwaysOffSampler")
    expect(Telemetry.samplerFromEnv({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.25" }).toString())
      .toMatch(/root=TraceIdRatioBased\{0\.25\}/)
  })
})

const resourceName = (span: ReadableSpan) => span.resource.attributes["service.name"]
