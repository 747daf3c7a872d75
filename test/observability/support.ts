import { SqlClient } from "@effect/sql"
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { type AppSettings, Settings } from "../../src/config/AppConfig.js"
import { Keyring } from "../../src/crypto/Keyring.js"
import * as DeliveryHttp from "../../src/http/DeliveryHttp.js"
import * as Metrics from "../../src/observability/Metrics.js"
import * as MetricsServer from "../../src/observability/MetricsServer.js"
import { DeliveryQueue } from "../../src/queue/DeliveryQueue.js"
import { insertRows, toRow } from "../../src/queue/Enqueue.js"
import * as Wakeup from "../../src/worker/Wakeup.js"
import * as Worker from "../../src/worker/Worker.js"
import { admin } from "../utils/TestDatabase.js"
import { TEST_KEY, testSettings } from "../utils/WorkerHarness.js"

export const keyring = new Keyring(Buffer.from(TEST_KEY, "base64"), [])

/**
 * The worker's production layer over test settings, with the pieces observability tests vary:
 * the metrics instance and the settings. Everything else (tracer,
 * TraceDeliveries, logger) comes from whatever the caller provides around it.
 */
export const workerLayer = (options: {
  readonly metrics: Metrics.WorkerMetrics
  readonly settings?: Partial<AppSettings>
}) =>
  Worker.layer.pipe(
    Layer.provide(Layer.mergeAll(
      DeliveryQueue.layer,
      DeliveryHttp.layer,
      Wakeup.layerListen,
      Layer.succeed(Metrics.Metrics, options.metrics),
      Worker.WorkerIdentity.layer(1),
      Settings.layer(testSettings(options.settings))
    ))
  )

/** Builds `layer` in a scope of its own; returns its context and the effect that closes it. */
export const start = <A, E, R>(layer: Layer.Layer<A, E, R>) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(layer, scope)
    return { context, stop: Scope.close(scope, Exit.void) }
  })

/** A metrics server on a free loopback port over `metrics`, reading the database in scope. */
export const startServer = (
  metrics: Metrics.WorkerMetrics,
  options: Omit<MetricsServer.MetricsServerOptions, "host" | "port"> & { readonly port?: number } = {},
  settings: Partial<AppSettings> = {}
) =>
  Effect.map(
    start(MetricsServer.layer({ host: "127.0.0.1", port: 0, ...options }).pipe(
      Layer.provide(Layer.mergeAll(Layer.succeed(Metrics.Metrics, metrics), Settings.layer(testSettings(settings))))
    )),
    ({ context, stop }) => ({ server: Context.get(context, MetricsServer.MetricsServer), stop })
  )

export interface HttpResult {
  readonly status: number
  readonly body: string
  readonly headers: Headers
}

/** A real HTTP request (Node's fetch); fails when nothing answers. */
export const request = (url: string, init: RequestInit = {}) =>
  Effect.tryPromise(async (): Promise<HttpResult> => {
    const response = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) })
    return { status: response.status, body: await response.text(), headers: response.headers }
  })

/** The same, for servers that must answer. */
export const get = (url: string, init: RequestInit = {}) => Effect.orDie(request(url, init))

/** One sample of the Prometheus text format: `name{labels} value`. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export const parseSamples = (text: string): ReadonlyArray<Sample> =>
  text.split("\n").flatMap((line) => {
    if (line === "" || line.startsWith("#")) return []
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null) throw new Error(`not a sample line: ${line}`)
    const [, name, rawLabels, value] = match as unknown as [string, string, string | undefined, string]
    const labels: Record<string, string> = {}
    for (const part of (rawLabels ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[part[1]!] = part[2]!
    return [{ name, labels, value: Number(value) }]
  })

/** The value of the one sample named `name` whose labels include `labels`; undefined when none. */
export const sample = (samples: ReadonlyArray<Sample>, name: string, labels: Record<string, string> = {}) => {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`)
  return found[0]?.value
}

export const scrape = (server: { url: (path: string) => string }) =>
  Effect.map(get(server.url("/metrics")), (result) => {
    if (result.status !== 200) throw new Error(`/metrics answered ${result.status}`)
    return { text: result.body, samples: parseSamples(result.body), contentType: result.headers.get("content-type") }
  })

/** Queues a delivery the way the library does (secret encrypted, optional producer traceparent). */
export const enqueue = (fields: {
  readonly url: string
  readonly secret?: string
  readonly userId?: string
  readonly eventType?: string
  readonly maxAttempts?: number
  readonly traceparent?: string
}) =>
  Effect.gen(function*() {
    const row = toRow({
      destination: { url: fields.url, secret: fields.secret ?? "whsec_dGVzdHNlY3JldA==" },
      eventType: fields.eventType ?? "order.created",
      payload: { order: 42 },
      userId: fields.userId,
      maxAttempts: fields.maxAttempts,
      traceparent: fields.traceparent
    }, keyring, 5)
    if (row._tag === "Left") return yield* Effect.die(row.left)
    const [enqueued] = yield* insertRows([row.right])
    return enqueued!.id
  }).pipe(Effect.orDie)

/** A registered endpoint (plaintext secret, as an operator's SQL might leave it). */
export const insertEndpoint = (url: string, secret: string, userId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ id: string }>`INSERT INTO partner_webhooks ("userId", url, secret) VALUES (${userId}, ${url}, ${secret}) RETURNING id::text`
  ).pipe(Effect.map((rows) => rows[0]!.id), Effect.orDie)

export const insertForEndpoint = (endpointId: string, userId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ id: string }>`
      INSERT INTO webhook_delivery_queue ("userId", partner_webhook_id, event_type, payload)
      VALUES (${userId}, ${endpointId}, 'order.created', '{"n": 1}'::json) RETURNING id::text`
  ).pipe(Effect.map((rows) => rows[0]!.id), Effect.orDie)

export { admin }

/** The database name the SqlClient in scope is connected to. */
export const currentDatabase = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ name: string }>`SELECT current_database() AS name`).pipe(Effect.map((rows) => rows[0]!.name), Effect.orDie)

/** Polls (real time) until `check` returns a value, failing after `timeoutMs`. */
export const waitFor = <A, E, R>(check: Effect.Effect<A | undefined, E, R>, what: string, timeoutMs = 15_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (true) {
      const value = yield* check
      if (value !== undefined) return value
      if (Date.now() > deadline) return yield* Effect.die(new Error(`timed out waiting for ${what}`))
      yield* Effect.sleep("25 millis")
    }
  })

// == a small OTLP/HTTP collector (JSON encoding, which the HTTP exporter sends by default)

interface OtlpValue {
  readonly stringValue?: string
  readonly intValue?: number | string
  readonly boolValue?: boolean
  readonly doubleValue?: number
}
interface OtlpSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly attributes?: ReadonlyArray<{ key: string; value: OtlpValue }>
  readonly links?: ReadonlyArray<{ traceId: string; spanId: string }>
}
interface OtlpRequest {
  readonly resourceSpans: ReadonlyArray<{
    readonly resource: { readonly attributes: ReadonlyArray<{ key: string; value: OtlpValue }> }
    readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<OtlpSpan> }>
  }>
}

const flatten = (attributes: ReadonlyArray<{ key: string; value: OtlpValue }> | undefined) =>
  Object.fromEntries((attributes ?? []).map(({ key, value }) =>
    [key, value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : value.boolValue ?? value.doubleValue)]
  ))

export const makeCollector = Effect.acquireRelease(
  Effect.async<{
    readonly url: string
    readonly close: () => void
    readonly paths: () => ReadonlyArray<string>
    readonly spans: () => ReadonlyArray<{ span: OtlpSpan; resource: Record<string, unknown>; attributes: Record<string, unknown> }>
  }>((resume) => {
    const requests: Array<{ path: string; body: OtlpRequest }> = []
    const server = createServer((req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (chunk: Buffer) => chunks.push(chunk))
      req.on("end", () => {
        requests.push({ path: req.url ?? "", body: JSON.parse(Buffer.concat(chunks).toString("utf8")) as OtlpRequest })
        res.writeHead(200, { "content-type": "application/json" })
        res.end("{}")
      })
    })
    server.listen(0, "127.0.0.1", () =>
      resume(Effect.succeed({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => server.close(),
        paths: () => requests.map((r) => r.path),
        spans: () =>
          requests.flatMap((r) =>
            r.body.resourceSpans.flatMap((rs) =>
              rs.scopeSpans.flatMap((ss) =>
                ss.spans.map((span) => ({ span, resource: flatten(rs.resource.attributes), attributes: flatten(span.attributes) }))
              )
            )
          )
      })))
  }),
  (collector) => Effect.sync(() => collector.close())
)

