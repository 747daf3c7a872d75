import * as Context from "effect/Context"

/**
 * Whether deliveries are traced: one root span per attempt (linked to the producer's trace), and
 * a `traceparent` header naming it sent to the receiver. Off unless a tracer exports spans
 * (the telemetry layer turns it on), so an untraced worker pays nothing for it.
 */
export class TraceDeliveries extends Context.Reference<TraceDeliveries>()("webhook-worker/TraceDeliveries", {
  defaultValue: () => false
}) {}
