/**
 * What every part of the benchmark shares: the signing secret, the event envelope, the ~1 KB
 * payload, and the small message protocol between the orchestrator and its child processes.
 * Imported by child processes too, so it depends on nothing but Node.
 */

/** The Standard Webhooks secret every system signs with (the receiver verifies a sample). */
export const SECRET = `whsec_${Buffer.from("webhook-worker benchmark key, 32B").toString("base64")}`

export const EVENT_TYPE = "order.created"

/** The graphile-worker task and the pg-boss queue the peers work. */
export const GRAPHILE_TASK = "deliver"
export const PGBOSS_QUEUE = "webhooks"

/** Receiver path; the URL is http://127.0.0.1:<port>/hook. */
export const HOOK_PATH = "/hook"

/** High-resolution wall-clock milliseconds, comparable across processes on this machine. */
export const nowMs = (): number => performance.timeOrigin + performance.now()

const FILLER = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. "

/**
 * The event data, about 1 KB of JSON: an order with a customer and a few lines. `seq` lets the
 * receiver match a request to the moment it was enqueued (latency phase).
 */
export const eventData = (seq: number) => ({
  seq,
  order: {
    id: `ord_${seq.toString(36).padStart(8, "0")}`,
    currency: "EUR",
    total_cents: 12_345 + (seq % 1000),
    created_at: "2025-01-01T12:00:00.000Z",
    customer: { id: `cus_${(seq * 7919) % 100_000}`, email: "jane.doe@example.com", name: "Jane Doe", tier: "gold" },
    shipping: { street: "1 Example Street", city: "Amsterdam", postcode: "1011 AB", country: "NL" },
    lines: [
      { sku: "SKU-0001", title: "Widget, blue", quantity: 2, unit_cents: 2_500 },
      { sku: "SKU-0002", title: "Gadget, large", quantity: 1, unit_cents: 4_995 },
      { sku: "SKU-0003", title: "Gizmo", quantity: 3, unit_cents: 850 }
    ]
  },
  note: FILLER.repeat(3).slice(0, 330)
})

/** The request body peers send: the same envelope our worker builds (type, timestamp, data). */
export const envelope = (seq: number) => ({
  type: EVENT_TYPE,
  timestamp: new Date().toISOString(),
  data: eventData(seq)
})

// == orchestrator <-> child protocol (over the IPC channel of a child process)

export type ReceiverCommand =
  | {
    readonly cmd: "reset"
    /** Unique webhook-ids after which the receiver reports `reached`. */
    readonly target: number
    /** Record the first receive time of each `seq` below this (0 = off). */
    readonly recordSeqs: number
    /** Hold each response this long (to keep many requests in flight). */
    readonly delayMs: number
  }
  | { readonly cmd: "stats" }
  | { readonly cmd: "seqTimes" }

export interface ReceiverStats {
  readonly unique: number
  readonly requests: number
  readonly duplicates: number
  readonly missingId: number
  readonly signaturesChecked: number
  readonly signaturesFailed: number
  readonly firstAt: number
  readonly lastAt: number
  readonly maxInFlight: number
  readonly cpuMs: number
}

export type ReceiverEvent =
  | { readonly event: "listening"; readonly port: number }
  | { readonly event: "first"; readonly at: number }
  | { readonly event: "reached"; readonly at: number }

/** A reply to a command, matched by `id`. */
export interface Reply<A> {
  readonly id: number
  readonly result: A
}

export type PeerEvent = { readonly event: "ready" } | { readonly event: "error"; readonly message: string }

export interface PostCeilingResult {
  readonly requests: number
  readonly failures: number
  readonly wallMs: number
  readonly cpuMs: number
}
