import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as Resource from "@effect/opentelemetry/Resource"
import * as Tracer from "@effect/opentelemetry/Tracer"
import type { Context as OtelContext, Link, SpanKind, Attributes } from "@opentelemetry/api"
import { trace } from "@opentelemetry/api"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  type ReadableSpan,
  type Sampler,
  SamplingDecision,
  type SamplingResult,
  SimpleSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import * as Layer from "effect/Layer"
import { hostname } from "node:os"
import type { AppSettings } from "../config/AppConfig.js"
import { version } from "../PackageInfo.js"
import { TraceDeliveries } from "../worker/TraceDeliveries.js"
import { tracesUrl } from "./Telemetry.js"

/**
 * Tracing, chosen by configuration: with no OTLP endpoint it provides nothing but
 * `TraceDeliveries = false` (Effect's built-in tracer, no SDK loaded, nothing exported, no
 * delivery spans and no `traceparent` header). With one, spans go
 * through the OpenTelemetry SDK to an OTLP/HTTP exporter in batches, and the worker's delivery
 * spans are switched on. Standard variables are honoured: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
 * OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*,
 * OTEL_TRACES_SAMPLER(_ARG) and OTEL_SDK_DISABLED (read from the process environment, which is
 * where systemd's EnvironmentFile= puts them).
 */

export interface TelemetryOptions {
  readonly serviceName: string
  /** Where spans go (the OTLP exporter in production, an in-memory one in tests). */
  readonly exporter: SpanExporter
  /** `batch` (production) exports in the background; `simple` exports as each span ends (tests). */
  readonly processor?: "batch" | "simple"
  /** Extra resource attributes, e.g. `service.instance.id`. */
  readonly resourceAttributes?: Attributes
  /** The sampler for spans without a parent; default from OTEL_TRACES_SAMPLER. */
  readonly sampler?: Sampler
}

/**
 * The NodeSdk tracer (with secret-scrubbing on export and background SQL kept out of traces)
 * plus the worker's `TraceDeliveries` switch. Provide it to the worker's layer.
 */
export const layerWith = (options: TelemetryOptions): Layer.Layer<TraceDeliveries> =>
  // Suspended: the processor is made (and shut down) once per build of the layer.
  Layer.suspend(() => makeLayer(options))

const makeLayer = (options: TelemetryOptions): Layer.Layer<TraceDeliveries> => {
  const exporter = new ScrubbingExporter(options.exporter)
  const processor: SpanProcessor = options.processor === "simple" ? new SimpleSpanProcessor(exporter) : new BatchSpanProcessor(exporter)
  // NodeSdk.layer's pieces, composed in sequence: NodeSdk.layer merges them in parallel, and
  // (effect 3.22) the tracer a parallel branch installs outlives the layer's scope, still pointing
  // at the shut-down provider. In sequence it is restored on release.
  const tracer = Tracer.layer.pipe(
    Layer.provide(NodeSdk.layerTracerProvider(processor, {
      sampler: new SkipBackgroundSql(options.sampler ?? samplerFromEnv(process.env)),
      shutdownTimeout: "5 seconds"
    })),
    Layer.provide(Resource.layerFromEnv(Resource.configToAttributes({
      serviceName: options.serviceName,
      serviceVersion: version,
      ...(options.resourceAttributes ? { attributes: options.resourceAttributes } : {})
    })))
  )
  return Layer.succeed(TraceDeliveries, true).pipe(Layer.provideMerge(Layer.discard(tracer)))
}

/** OTLP/HTTP export for `webhook-worker run` (see Telemetry.layer, which loads this module only when needed). */
export const layerForEndpoint = (
  settings: Pick<AppSettings, "otelServiceName">,
  endpoint: string,
  instance: number,
  env: NodeJS.ProcessEnv
): Layer.Layer<TraceDeliveries> => {
  const specific = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  return Layer.suspend(() =>
    makeLayer({
      serviceName: settings.otelServiceName,
      // The signal-specific variable wins, as the spec says; the exporter reads it itself.
      exporter: new OTLPTraceExporter(specific !== undefined && specific.trim() !== "" ? {} : { url: tracesUrl(endpoint) }),
      resourceAttributes: { "service.instance.id": `${hostname()}:${instance}` },
      sampler: samplerFromEnv(env)
    })
  )
}

// == sampling

/** OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, as the SDK itself reads them (default parentbased_always_on). */
export const samplerFromEnv = (env: NodeJS.ProcessEnv): Sampler => {
  const arg = Number(env.OTEL_TRACES_SAMPLER_ARG)
  const ratio = Number.isFinite(arg) && arg >= 0 && arg <= 1 && env.OTEL_TRACES_SAMPLER_ARG?.trim() !== "" ? arg : 1
  switch (env.OTEL_TRACES_SAMPLER?.trim().toLowerCase()) {
    case "always_on":
      return new AlwaysOnSampler()
    case "always_off":
      return new AlwaysOffSampler()
    case "traceidratio":
      return new TraceIdRatioBasedSampler(ratio)
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) })
    default:
      return new ParentBasedSampler({ root: new AlwaysOnSampler() })
  }
}

/**
 * Drops SQL spans that have no parent: the claim loop's polls, the group-commit writes, LISTEN
 * and the like. Exported, each would be a one-span trace every few seconds per instance, burying
 * the delivery traces. SQL run inside a traced operation has a parent and is kept; its children
 * follow its decision through the parent-based sampler.
 */
class SkipBackgroundSql implements Sampler {
  constructor(private readonly inner: Sampler) {}
  shouldSample(context: OtelContext, traceId: string, spanName: string, spanKind: SpanKind, attributes: Attributes, links: Array<Link>): SamplingResult {
    if (trace.getSpanContext(context) === undefined && spanName.startsWith("sql.")) {
      return { decision: SamplingDecision.NOT_RECORD }
    }
    return this.inner.shouldSample(context, traceId, spanName, spanKind, attributes, links)
  }
  toString() {
    return `SkipBackgroundSql{${this.inner.toString()}}`
  }
}

// == scrubbing

/** Attributes that carry a destination's path or query: chat-style webhook URLs keep their token there. */
const PATH_ATTRIBUTES = new Set(["url.path", "url.query", "http.target", "http.route"])
const FULL_URL_ATTRIBUTES = new Set(["url.full", "http.url"])

/** `scheme://host[:port]/…`: what the logs show of a destination, and all a trace needs. */
export const scrubUrl = (raw: string): string => {
  try {
    const url = new URL(raw)
    return `${url.protocol}//${url.host}${url.pathname === "/" && url.search === "" ? "/" : "/…"}`
  } catch {
    return "[redacted]"
  }
}

// user:password@ in anything URL-like, wherever it turns up (error messages included).
const USERINFO = /([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/gi

export const scrubAttributes = (attributes: Attributes): Attributes => {
  const out: Attributes = {}
  for (const [key, value] of Object.entries(attributes)) {
    if (PATH_ATTRIBUTES.has(key)) continue
    if (FULL_URL_ATTRIBUTES.has(key) && typeof value === "string") out[key] = scrubUrl(value)
    else if (typeof value === "string") out[key] = value.replace(USERINFO, "$1***@")
    else out[key] = value
  }
  return out
}

/**
 * Exports copies of the spans with destination paths, queries and credentials removed. The HTTP
 * client span records the full request URL, and receivers' URLs often carry a token in the path
 * (e.g. chat webhooks) or a password in the userinfo; the logs never show more than the host, and
 * neither do the traces.
 */
class ScrubbingExporter implements SpanExporter {
  constructor(private readonly inner: SpanExporter) {}
  export(spans: Array<ReadableSpan>, done: Parameters<SpanExporter["export"]>[1]): void {
    this.inner.export(spans.map(scrubSpan), done)
  }
  shutdown() {
    return this.inner.shutdown()
  }
  forceFlush() {
    return this.inner.forceFlush ? this.inner.forceFlush() : Promise.resolve()
  }
}

const scrubSpan = (span: ReadableSpan): ReadableSpan => ({
  name: span.name,
  kind: span.kind,
  spanContext: () => span.spanContext(),
  ...(span.parentSpanContext !== undefined ? { parentSpanContext: span.parentSpanContext } : {}),
  startTime: span.startTime,
  endTime: span.endTime,
  status: span.status.message === undefined ? span.status : { ...span.status, message: span.status.message.replace(USERINFO, "$1***@") },
  attributes: scrubAttributes(span.attributes),
  links: span.links,
  events: span.events.map((event) => (event.attributes ? { ...event, attributes: scrubAttributes(event.attributes) } : event)),
  duration: span.duration,
  ended: span.ended,
  resource: span.resource,
  instrumentationScope: span.instrumentationScope,
  droppedAttributesCount: span.droppedAttributesCount,
  droppedEventsCount: span.droppedEventsCount,
  droppedLinksCount: span.droppedLinksCount
})
