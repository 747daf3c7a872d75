import * as Context from "effect/Context"
import * as Layer from "effect/Layer"
import * as Prom from "prom-client"

/**
 * The worker's Prometheus metrics (SPEC.md "Metrics"). Counters move as the worker records
 * outcomes; queue gauges are set by the metrics server from a cached database read.
 */
export interface WorkerMetrics {
  readonly registry: Prom.Registry
  readonly delivered: (userId: string | null, partnerId: string | null) => void
  /** An attempt that did not deliver (whether retried or dead-lettered next). */
  readonly failed: (reason: string) => void
  readonly deadLettered: (reason: string) => void
  readonly retryScheduled: () => void
  readonly attemptDuration: (seconds: number, outcome: string) => void
  readonly inFlight: (count: number) => void
  /** Rows claimed and waiting in this process for a free slot. */
  readonly claimedAhead: (count: number) => void
  readonly claimed: (rows: number) => void
  readonly leaseLost: (rows: number) => void
  readonly leasesReclaimed: (rows: number) => void
  readonly queueSize: (sizes: ReadonlyMap<string, number>) => void
  readonly oldestDueAge: (seconds: number) => void
  /** The queue gauges were refreshed from the database (their age is exported, for staleness alerts). */
  readonly queueStatsRefreshed: (atMs: number) => void
  /** The claim loop went round (or is waiting on the database on purpose): /healthz reads this. */
  readonly loopHeartbeat: () => void
  /** When the claim loop last reported in (ms since the epoch); creation time until it first does. */
  readonly lastLoopHeartbeatMs: () => number
}

export class Metrics extends Context.Tag("webhook-worker/Metrics")<Metrics, WorkerMetrics>() {}

export interface MetricsOptions {
  /** A registry to register into (a host app's own); a new one otherwise. */
  readonly registry?: Prom.Registry
  /** Keep `user_id`/`partner_id` labels (false drops them, for fleets with many tenants). */
  readonly tenantLabels: boolean
  /** Also collect Node's default process metrics. */
  readonly processMetrics: boolean
}

const STATUSES = ["pending", "processing", "failed", "delivered", "dead_letter"] as const

export const make = (options: MetricsOptions): WorkerMetrics => {
  const registry = options.registry ?? new Prom.Registry()
  const registers = [registry]
  if (options.processMetrics) Prom.collectDefaultMetrics({ register: registry })

  // Without tenant labels the series has no labels at all (not empty ones), so a fleet with many
  // tenants keeps one series and `sum(rate(webhooks_delivered_total[5m]))` reads the same either way.
  // Counted in a plain map and added to the counter when it is read (a scrape): prom-client's
  // inc with labels builds a label hash and validates the labels on every call, once per delivery.
  const deliveredPending = new Map<string, { readonly labels: { user_id: string; partner_id: string }; count: number }>()
  let deliveredUnlabelled = 0
  new Prom.Counter({
    name: "webhooks_delivered_total",
    help: "Webhooks delivered (2xx)",
    labelNames: options.tenantLabels ? ["user_id", "partner_id"] : [],
    registers,
    collect() {
      if (deliveredUnlabelled > 0) this.inc(deliveredUnlabelled)
      deliveredUnlabelled = 0
      for (const pending of deliveredPending.values()) if (pending.count > 0) this.inc(pending.labels, pending.count)
      deliveredPending.clear()
    }
  })
  const failed = new Prom.Counter({
    name: "webhooks_failed_total",
    help: "Delivery attempts that did not deliver, by reason",
    labelNames: ["reason"],
    registers
  })
  const deadLettered = new Prom.Counter({
    name: "webhooks_dead_lettered_total",
    help: "Deliveries moved to the dead letter queue, by reason",
    labelNames: ["reason"],
    registers
  })
  const retries = new Prom.Counter({
    name: "webhook_retries_scheduled_total",
    help: "Failed attempts given a next_retry_at",
    registers
  })
  const duration = new Prom.Histogram({
    name: "webhook_delivery_duration_seconds",
    help: "Duration of one delivery attempt, connect to last byte",
    labelNames: ["outcome"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30],
    registers
  })
  // Changes on every attempt; read when scraped.
  let inFlightCount = 0
  new Prom.Gauge({
    name: "webhook_deliveries_in_flight",
    help: "HTTP deliveries in flight in this process",
    registers,
    collect() {
      this.set(inFlightCount)
    }
  })
  // Like in-flight: changes with nearly every attempt started, read when scraped.
  let aheadCount = 0
  new Prom.Gauge({
    name: "webhook_rows_claimed_ahead",
    help: "Rows claimed by this process and waiting for a free delivery slot",
    registers,
    collect() {
      this.set(aheadCount)
    }
  })
  const claimed = new Prom.Counter({
    name: "webhook_rows_claimed_total",
    help: "Rows claimed (leased) by this process",
    registers
  })
  const leaseLost = new Prom.Counter({
    name: "webhook_lease_lost_total",
    help: "Attempt results not recorded because the lease had passed to another worker",
    registers
  })
  const reclaimed = new Prom.Counter({
    name: "webhook_leases_reclaimed_total",
    help: "Rows claimed after another worker's lease expired",
    registers
  })
  const queueSize = new Prom.Gauge({
    name: "webhook_queue_size",
    help: "Rows in webhook_delivery_queue by status",
    labelNames: ["status"],
    registers
  })
  const oldestDue = new Prom.Gauge({
    name: "webhook_queue_oldest_due_age_seconds",
    help: "How long the longest-waiting due row has been due (0 when none)",
    registers
  })
  const queueStatsAt = new Prom.Gauge({
    name: "webhook_queue_stats_refreshed_timestamp_seconds",
    help: "When the queue gauges were last read from the database (Unix seconds; 0 before the first read)",
    registers
  })
  let lastHeartbeatMs = Date.now()
  new Prom.Gauge({
    name: "webhook_worker_loop_heartbeat_timestamp_seconds",
    help: "When the claim loop last went round (Unix seconds); /healthz fails when it is too old",
    registers,
    collect() {
      this.set(lastHeartbeatMs / 1000)
    }
  })
  for (const status of STATUSES) queueSize.set({ status }, 0)
  queueStatsAt.set(0)

  return {
    registry,
    delivered: (userId, partnerId) => {
      if (!options.tenantLabels) {
        deliveredUnlabelled++
        return
      }
      const key = `${userId ?? ""}\u0000${partnerId ?? ""}`
      const pending = deliveredPending.get(key)
      if (pending !== undefined) pending.count++
      else deliveredPending.set(key, { labels: { user_id: userId ?? "", partner_id: partnerId ?? "" }, count: 1 })
    },
    failed: (reason) => failed.inc({ reason }),
    deadLettered: (reason) => deadLettered.inc({ reason }),
    retryScheduled: () => retries.inc(),
    attemptDuration: (seconds, outcome) => duration.observe({ outcome }, seconds),
    inFlight: (count) => {
      inFlightCount = count
    },
    claimedAhead: (count) => {
      aheadCount = count
    },
    claimed: (rows) => claimed.inc(rows),
    leaseLost: (rows) => leaseLost.inc(rows),
    leasesReclaimed: (rows) => reclaimed.inc(rows),
    queueSize: (sizes) => {
      for (const status of STATUSES) queueSize.set({ status }, sizes.get(status) ?? 0)
    },
    oldestDueAge: (seconds) => oldestDue.set(seconds),
    queueStatsRefreshed: (atMs) => queueStatsAt.set(atMs / 1000),
    loopHeartbeat: () => {
      lastHeartbeatMs = Date.now()
    },
    lastLoopHeartbeatMs: () => lastHeartbeatMs
  }
}

export const layer = (options: MetricsOptions) => Layer.sync(Metrics, () => make(options))

/** Metrics kept in a private registry nobody scrapes: for hosts that opt out, and tests. */
export const layerDetached = Layer.sync(Metrics, () => make({ tenantLabels: true, processMetrics: false }))
