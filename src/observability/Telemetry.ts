import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { AppSettings } from "../config/AppConfig.js"
import { TraceDeliveries } from "../worker/TraceDeliveries.js"

/**
 * Tracing, chosen by configuration: with no OTLP endpoint it provides nothing but
 * `TraceDeliveries = false` (Effect's built-in tracer, nothing exported, no delivery spans and no
 * `traceparent` header) and the OpenTelemetry SDK is never even loaded (importing it costs more
 * than half a second of start-up). With one, spans go through the SDK to an OTLP/HTTP exporter in
 * batches (TelemetrySdk.ts), and the worker's delivery spans are switched on. Standard variables
 * are honoured: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT /
 * _COMPRESSION, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*, OTEL_TRACES_SAMPLER(_ARG) and
 * OTEL_SDK_DISABLED (read from the process environment, where systemd's EnvironmentFile= puts them).
 */

/** Whether these settings export traces (so delivery spans and the HTTP client span are worth making). */
export const isEnabled = (
  settings: Pick<AppSettings, "otelEndpoint">,
  env: NodeJS.ProcessEnv = process.env
): boolean => Option.isSome(settings.otelEndpoint) && !isTrue(env.OTEL_SDK_DISABLED)

const isTrue = (value: string | undefined) => value !== undefined && value.trim().toLowerCase() === "true"

/** The traces URL for an OTLP base endpoint: `<endpoint>/v1/traces`, as the OTel spec says. */
export const tracesUrl = (endpoint: string): string => `${endpoint.replace(/\/+$/, "")}/v1/traces`

/**
 * The telemetry of `webhook-worker run`: nothing when OTEL_EXPORTER_OTLP_ENDPOINT is unset (or
 * OTEL_SDK_DISABLED=true); otherwise OTLP/HTTP export to `<endpoint>/v1/traces` (or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as given), `service.name` from OTEL_SERVICE_NAME and
 * `service.instance.id` naming host and instance.
 */
export const layer = (
  settings: Pick<AppSettings, "otelEndpoint" | "otelServiceName">,
  instance: number,
  env: NodeJS.ProcessEnv = process.env
): Layer.Layer<TraceDeliveries> => {
  if (!isEnabled(settings, env) || Option.isNone(settings.otelEndpoint)) return Layer.succeed(TraceDeliveries, false)
  const endpoint = settings.otelEndpoint.value
  return Layer.unwrapEffect(
    Effect.promise(() => import("./TelemetrySdk.js")).pipe(
      Effect.map((sdk) => sdk.layerForEndpoint(settings, endpoint, instance, env))
    )
  )
}
