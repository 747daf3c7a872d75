import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Cause, Effect, Exit, Layer, Option } from "effect"
import { describe, expect } from "vitest"
import { ClaimRowMismatch, DeliveryQueue } from "../../src/queue/DeliveryQueue.js"
import { layerPg } from "../utils/TestDatabase.js"

const withQueue = <A, E>(body: Effect.Effect<A, E, SqlClient.SqlClient | DeliveryQueue>) =>
  body.pipe(Effect.provide(DeliveryQueue.layer.pipe(Layer.provideMerge(layerPg))), Effect.scoped, Effect.orDie)

describe("claimed rows as the worker reads them", () => {
  it.live("every column of a claimed row reaches the worker", () =>
    withQueue(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const queue = yield* DeliveryQueue
      yield* sql`
        INSERT INTO webhook_delivery_queue (id, "userId", url, secret, event_type, payload, max_attempts, traceparent, "createdAt")
        VALUES ('0190a000-0000-7000-8000-000000000001', 'user-7', 'https://partner.example/h', 'whsec_c2VjcmV0', 'order.paid',
                '{"n":1}'::json, 3, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', '2026-01-02T03:04:05.678Z')`
      const [row] = yield* queue.claim("test-worker", 10, 30_000)
      expect(row).toEqual({
        id: "0190a000-0000-7000-8000-000000000001",
        userId: "user-7",
        endpointId: null,
        endpointEnabled: null,
        url: "https://partner.example/h",
        secret: "whsec_c2VjcmV0",
        secretFromRow: true,
        previousSecret: null,
        eventType: "order.paid",
        payload: "{\"n\":1}",
        createdAtMs: Date.parse("2026-01-02T03:04:05.678Z"),
        attempt: 1,
        maxAttempts: 3,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        reclaimed: false,
        exhausted: false
      })
    })))

  it.live("a claim function whose columns do not match this version dies with a message naming the column", () =>
    withQueue(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const queue = yield* DeliveryQueue
      // As if the database had been migrated by another version: `attempt` comes back as text.
      yield* sql`DROP FUNCTION webhook_claim_deliveries(text, double precision, integer)`
      yield* sql.unsafe(`
        CREATE FUNCTION webhook_claim_deliveries(p_worker text, p_lease_ms double precision, p_limit integer)
        RETURNS TABLE (
          id text, user_id text, endpoint_id text, endpoint_enabled boolean, url text, secret text,
          secret_from_row boolean, previous_secret text, event_type text, payload text,
          created_at_ms double precision, attempt text, max_attempts integer, traceparent text,
          reclaimed boolean, exhausted boolean
        ) LANGUAGE sql AS $$
          SELECT 'id-1', NULL::text, NULL::text, NULL::boolean, 'https://partner.example/h', 's', true, NULL::text, 'e', '{}',
                 0::float8, '1', 5, NULL::text, false, false
        $$`)
      const exit = yield* Effect.exit(queue.claim("test-worker", 10, 30_000))
      expect(Exit.isFailure(exit)).toBe(true)
      const defect = Exit.isFailure(exit) ? Option.getOrUndefined(Cause.dieOption(exit.cause)) : undefined
      expect(defect).toBeInstanceOf(ClaimRowMismatch)
      expect((defect as ClaimRowMismatch).message).toBe(
        "webhook_claim_deliveries returned string in column attempt, expected number (is the database migrated by this version?)"
      )
    })))
})
