/**
 * Scale: the cost of our claim statement (the product's own `DeliveryQueue.claim`) with 10k, 100k
 * and 1M delivered rows in the table and 10k / 100k rows due. Delivered rows carry the same ~1 KB
 * payload and time-ordered ids as real ones. After each fill or delete the table is VACUUM
 * ANALYZEd, standing in for autovacuum (which is off on the measurement server). For each point:
 * client-side latency of K sequential claims of WORKER_BATCH_SIZE rows, and the server's own
 * execution time and plan from EXPLAIN (ANALYZE, BUFFERS) of the same statement.
 */
import { Effect, Layer, ManagedRuntime, Redacted } from "effect"
import Pg from "pg"
import { Keyring } from "../../src/crypto/Keyring.js"
import * as Database from "../../src/db/Database.js"
import { migrate, readMigrations } from "../../src/db/Migrator.js"
import { DeliveryQueue } from "../../src/queue/DeliveryQueue.js"
import { EVENT_TYPE, eventData, nowMs, SECRET } from "./common.js"
import { type Context, quietGate } from "./context.js"
import { connect, urlFor } from "./db.js"
import { median, percentile } from "./stats.js"
import { ENCRYPTION_KEY } from "./systems.js"

export interface ScalePoint {
  readonly delivered: number
  readonly due: number
  readonly claims: number
  readonly batch: number
  readonly rowsClaimed: number
  readonly clientMs: { readonly p50: number | null; readonly p90: number | null; readonly p99: number | null }
  /** EXPLAIN ANALYZE execution time, median of EXPLAIN_RUNS. */
  readonly serverMs: number | null
  readonly sharedBuffers: number | null
  /** Whether the plan reads the due rows through the partial index idx_wdq_due. */
  readonly usesDueIndex: boolean
  readonly planNodes: ReadonlyArray<string>
}

export interface ScaleResult {
  readonly ok: boolean
  readonly error?: string
  readonly batch: number
  readonly points: ReadonlyArray<ScalePoint>
  /**
   * Server execution time of the claim (EXPLAIN ANALYZE median) at the largest table over the
   * smallest, per due-row count: the claim's own cost, without the round trip and client noise.
   */
  readonly growth: Record<string, number | null>
  /** The same ratio for the client-side median (includes the round trip). */
  readonly clientGrowth: Record<string, number | null>
  readonly fillSeconds: number
}

const FILL_CHUNK = 100_000
const EXPLAIN_RUNS = 9
const DAY_MS = 86_400_000

/**
 * Inserts `count` rows in SQL (fast), time-ordered UUIDv7-shaped ids starting at `baseMs`.
 * `delivered`: status delivered long ago; otherwise pending and due now.
 */
const fillSql = (delivered: boolean) => `
INSERT INTO webhook_delivery_queue
  (id, url, secret, event_type, payload, status, attempt_count, next_retry_at, delivered_at, last_response_status, "createdAt", "updatedAt")
SELECT (lpad(to_hex($1::bigint + g), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
       $2, $3, $4, $5::json,
       ${delivered ? "'delivered', 1" : "'pending', 0"},
       ${delivered ? "now() - interval '1 day'" : "now() - interval '1 second'"},
       ${delivered ? "now() - interval '1 day', 200" : "NULL, NULL"},
       now(), now()
FROM generate_series($6::bigint, $7::bigint) AS g, LATERAL (SELECT md5(g::text || $8) AS h) AS r`

export const scale = async (ctx: Context): Promise<ScaleResult> => {
  const batch = ctx.options.batchSize ?? 10
  const database = await ctx.admin.createDatabase("scale")
  const points: Array<ScalePoint> = []
  const runtime = ManagedRuntime.make(
    DeliveryQueue.layer.pipe(Layer.provideMerge(Database.layer({ url: Redacted.make(urlFor(database)), maxConnections: 1 })))
  )
  let admin: Pg.Client | undefined
  let fillMs = 0
  try {
    await runtime.runPromise(Effect.flatMap(readMigrations(), migrate))
    admin = (await connect(database, "webhook-worker bench scale")).client
    const keyring = new Keyring(Buffer.from(ENCRYPTION_KEY, "base64"), [])
    const secret = keyring.encrypt(SECRET)
    const payload = JSON.stringify(eventData(1))
    const baseMs = Date.now() - 30 * DAY_MS
    let delivered = 0
    const fill = async (client: Pg.Client, count: number, asDelivered: boolean, offset: number, startMs: number) => {
      const t0 = nowMs()
      for (let from = 0; from < count; from += FILL_CHUNK) {
        const to = Math.min(count, from + FILL_CHUNK) - 1
        await client.query(fillSql(asDelivered), [startMs, ctx.receiver.url, secret, EVENT_TYPE, payload, offset + from, offset + to, asDelivered ? "d" : `p${Date.now()}`])
      }
      fillMs += nowMs() - t0
    }
    const claimSql = await captureClaimSql(runtime, batch)
    for (const level of [...ctx.options.scaleDelivered].sort((a, b) => a - b)) {
      if (level > delivered) {
        ctx.log(`  scale: filling to ${level.toLocaleString("en-US")} delivered rows`)
        await fill(admin, level - delivered, true, delivered, baseMs)
        delivered = level
      }
      for (const due of [...ctx.options.scaleDue].sort((a, b) => a - b)) {
        await admin.query("DELETE FROM webhook_delivery_queue WHERE status <> 'delivered'")
        await fill(admin, due, false, 0, Date.now())
        const t0 = nowMs()
        await admin.query("VACUUM ANALYZE webhook_delivery_queue")
        fillMs += nowMs() - t0
        await quietGate(ctx)
        points.push(await measure(runtime, admin, claimSql, delivered, due, batch, ctx.options.scaleClaims))
        const last = points.at(-1)!
        ctx.log(`  scale: ${delivered.toLocaleString("en-US")} delivered, ${due.toLocaleString("en-US")} due: claim p50 ${last.clientMs.p50?.toFixed(2)} ms, server ${last.serverMs?.toFixed(3)} ms, due index ${last.usesDueIndex ? "yes" : "NO"}`)
      }
    }
    const levels = [...new Set(points.map((p) => p.delivered))].sort((a, b) => a - b)
    const growthOf = (pick: (p: ScalePoint) => number | null) => {
      const growth: Record<string, number | null> = {}
      for (const due of ctx.options.scaleDue) {
        const low = points.find((p) => p.delivered === levels[0] && p.due === due)
        const high = points.find((p) => p.delivered === levels.at(-1) && p.due === due)
        const a = low === undefined ? null : pick(low)
        const b = high === undefined ? null : pick(high)
        growth[`due_${due}`] = a !== null && b !== null && a > 0 ? b / a : null
      }
      return growth
    }
    return {
      ok: true,
      batch,
      points,
      growth: growthOf((p) => p.serverMs),
      clientGrowth: growthOf((p) => p.clientMs.p50),
      fillSeconds: fillMs / 1000
    }
  } catch (error) {
    return {
      ok: false,
      error: error instanceof Error ? error.stack ?? error.message : String(error),
      batch,
      points,
      growth: {},
      clientGrowth: {},
      fillSeconds: fillMs / 1000
    }
  } finally {
    await runtime.dispose().catch(() => undefined)
    await admin?.end().catch(() => undefined)
    await ctx.admin.dropDatabase(database).catch(() => undefined)
  }
}

type Runtime = ManagedRuntime.ManagedRuntime<DeliveryQueue, unknown>

const claim = (runtime: Runtime, batch: number) =>
  runtime.runPromise(Effect.flatMap(DeliveryQueue, (queue) => queue.claim("bench-scale", batch, 60_000)))

/**
 * The claim statement exactly as the product sends it, read off the driver during one claim
 * (on an empty table), so that EXPLAIN runs the real statement and not a copy of it.
 */
const captureClaimSql = async (runtime: Runtime, batch: number): Promise<string> => {
  const proto = Pg.Client.prototype as unknown as { query: (...args: Array<unknown>) => unknown }
  const original = proto.query
  let captured = ""
  proto.query = function(this: unknown, ...args: Array<unknown>) {
    const first = args[0]
    const text = typeof first === "string" ? first : typeof first === "object" && first !== null && "text" in first ? String(first.text) : ""
    // The claim is a PL/pgSQL function (migrations/0004); older builds sent the statement itself.
    if (text.includes("SKIP LOCKED") || text.includes("webhook_claim_deliveries")) captured = text
    return original.apply(this, args)
  }
  try {
    await claim(runtime, batch)
  } finally {
    proto.query = original
  }
  if (captured === "") throw new Error("could not capture the claim statement from the driver")
  return captured
}

/** Plan nodes of the statements run inside the claim (auto_explain, nested, rolled back). */
const nestedPlanNodes = async (admin: Pg.Client, claimSql: string, batch: number): Promise<Array<string>> => {
  const plans: Array<string> = []
  const onNotice = (notice: { message?: string | undefined }) => {
    const text = notice.message ?? ""
    const start = text.indexOf("{")
    if (start === -1) return
    try {
      const parsed = JSON.parse(text.slice(start)) as { Plan?: PlanNode }
      if (parsed.Plan !== undefined) plans.push(...flatten(parsed.Plan))
    } catch {
      // Not a plan.
    }
  }
  admin.on("notice", onNotice)
  await admin.query("BEGIN")
  try {
    await admin.query("LOAD 'auto_explain'")
    await admin.query(
      "SET LOCAL auto_explain.log_min_duration = 0; SET LOCAL auto_explain.log_nested_statements = on; " +
        "SET LOCAL auto_explain.log_format = json; SET LOCAL auto_explain.log_level = notice; SET LOCAL client_min_messages = notice"
    )
    await admin.query(claimSql, ["bench-explain", 60_000, batch])
  } finally {
    await admin.query("ROLLBACK")
    admin.off("notice", onNotice)
  }
  return plans
}

interface PlanNode {
  readonly "Node Type": string
  readonly "Index Name"?: string
  readonly "Relation Name"?: string
  readonly Plans?: ReadonlyArray<PlanNode>
}

const flatten = (node: PlanNode): Array<string> => [
  `${node["Node Type"]}${node["Index Name"] ? ` using ${node["Index Name"]}` : node["Relation Name"] ? ` on ${node["Relation Name"]}` : ""}`,
  ...(node.Plans ?? []).flatMap(flatten)
]

const measure = async (
  runtime: Runtime,
  admin: Pg.Client,
  claimSql: string,
  delivered: number,
  due: number,
  batch: number,
  claims: number
): Promise<ScalePoint> => {
  // Warm-up, as a running worker's would be.
  for (let i = 0; i < 5; i++) await claim(runtime, batch)
  const times: Array<number> = []
  let rowsClaimed = 0
  for (let i = 0; i < claims; i++) {
    const t0 = performance.now()
    const rows = await claim(runtime, batch)
    times.push(performance.now() - t0)
    rowsClaimed += rows.length
  }
  times.sort((a, b) => a - b)
  const server: Array<number> = []
  let sharedBuffers: number | null = null
  let planNodes: Array<string> = []
  for (let i = 0; i < EXPLAIN_RUNS; i++) {
    await admin.query("BEGIN")
    try {
      const result = await admin.query<{ "QUERY PLAN": ReadonlyArray<{ Plan: PlanNode & { "Shared Hit Blocks"?: number; "Shared Read Blocks"?: number }; "Execution Time": number }> }>(
        `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${claimSql}`,
        ["bench-explain", 60_000, batch]
      )
      const plan = result.rows[0]?.["QUERY PLAN"][0]
      if (plan !== undefined) {
        server.push(plan["Execution Time"])
        sharedBuffers = (plan.Plan["Shared Hit Blocks"] ?? 0) + (plan.Plan["Shared Read Blocks"] ?? 0)
        planNodes = flatten(plan.Plan)
      }
    } finally {
      await admin.query("ROLLBACK")
    }
  }
  // The function's own statements, as the server planned them: auto_explain reports nested plans.
  if (!planNodes.some((node) => node.includes("idx_wdq_due"))) planNodes = await nestedPlanNodes(admin, claimSql, batch)
  return {
    delivered,
    due,
    claims,
    batch,
    rowsClaimed,
    clientMs: { p50: percentile(times, 50), p90: percentile(times, 90), p99: percentile(times, 99) },
    serverMs: median(server),
    sharedBuffers,
    usesDueIndex: planNodes.some((node) => node.includes("idx_wdq_due")),
    planNodes
  }
}
