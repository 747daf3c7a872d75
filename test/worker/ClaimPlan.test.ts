import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import { describe, expect } from "vitest"
import { layerPg } from "../utils/TestDatabase.js"

interface PlanNode {
  readonly "Node Type": string
  readonly "Index Name"?: string
  readonly "Relation Name"?: string
  readonly Plans?: ReadonlyArray<PlanNode>
}

const nodes = (node: PlanNode): ReadonlyArray<PlanNode> => [node, ...(node.Plans ?? []).flatMap(nodes)]

/**
 * The row-picking SELECT inside webhook_claim_deliveries, as installed in the database (not a
 * copy that could drift from migrations/0003_claim_functions.sql).
 */
const claimSelect = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [fn] = yield* sql<{ src: string }>`SELECT prosrc AS src FROM pg_proc WHERE proname = 'webhook_claim_deliveries'`
  const match = /WITH due AS \(\s*(SELECT[\s\S]*?FOR UPDATE SKIP LOCKED)\s*\)/.exec(fn!.src)
  if (match === null) return yield* Effect.die(new Error(`no "WITH due AS (SELECT … FOR UPDATE SKIP LOCKED)" in:\n${fn!.src}`))
  expect(match[1]).toMatch(/LIMIT p_limit/)
  return match[1]!
})

const planOf = (statement: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<{ "QUERY PLAN": ReadonlyArray<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) ${statement}`)).pipe(
    Effect.map((rows) => nodes(rows[0]!["QUERY PLAN"][0]!.Plan))
  )

const scansOfQueue = (plan: ReadonlyArray<PlanNode>) =>
  plan.filter((node) => node["Relation Name"] === "webhook_delivery_queue").map((node) => `${node["Node Type"]} ${node["Index Name"] ?? ""}`.trim())

describe("the claim query plan", () => {
  it.live("on 20k delivered rows and 100 due ones, after ANALYZE, the planner picks the partial index idx_wdq_due", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, delivered_at, next_retry_at)
        SELECT 'https://partner.example/h', 's', 'e', '{}'::json, 'delivered', 1, now() - n * interval '1 second', now() - n * interval '1 second'
        FROM generate_series(1, 20000) AS n`
      yield* sql`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, next_retry_at)
        SELECT 'https://partner.example/h', 's', 'e', '{}'::json, 'pending', now() - n * interval '1 millisecond'
        FROM generate_series(1, 100) AS n`
      // Waiting for a retry: in the index, but not due yet.
      yield* sql`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, next_retry_at)
        SELECT 'https://partner.example/h', 's', 'e', '{}'::json, 'failed', 1, now() + n * interval '1 minute'
        FROM generate_series(1, 50) AS n`
      yield* sql`ANALYZE webhook_delivery_queue`
      const select = yield* claimSelect

      // A custom plan, as for a first call with the worker's batch size.
      const custom = yield* planOf(select.replace(/\bp_limit\b/, "10"))
      expect(scansOfQueue(custom)).toEqual(["Index Scan idx_wdq_due"])
      expect(custom.map((node) => node["Node Type"])).toContain("LockRows")

      // The generic plan PL/pgSQL may settle on after a few calls, LIMIT a parameter.
      // One transaction, so PREPARE, the setting and EXPLAIN share a connection.
      const generic = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql.unsafe(`PREPARE ww_claim_due(integer) AS ${select.replace(/\bp_limit\b/, "$1")}`)
        yield* sql`SET LOCAL plan_cache_mode = force_generic_plan`
        const plan = yield* planOf("EXECUTE ww_claim_due(10)")
        yield* sql`DEALLOCATE ww_claim_due`
        return plan
      }))
      expect(scansOfQueue(generic)).toEqual(["Index Scan idx_wdq_due"])
    }).pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped, Effect.orDie))
})
