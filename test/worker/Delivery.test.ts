import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect, Layer } from "effect"
import { Webhook } from "standardwebhooks"
import { describe, expect } from "vitest"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg } from "../utils/TestDatabase.js"
import { eventually, insertRaw, rowById, startWorker, statusIs } from "../utils/WorkerHarness.js"

const scoped = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | import("@effect/sql-pg").PgClient.PgClient | import("effect").Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

describe("delivery end to end", () => {
  it.live("a producer's raw SQL row is signed, delivered and its plaintext secret encrypted", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const id = yield* insertRaw({ url: receiver.url(), payload: `{"test": "data", "n": 1}` })
      const stop = yield* startWorker()
      const row = yield* eventually(statusIs(id, "delivered"), "delivered")
      yield* stop

      expect(row.attempt_count).toBe(1)
      expect(row.last_response_status).toBe(200)
      expect(row.delivered_at).not.toBeNull()
      expect(row.locked_by).toBeNull()
      expect(row.secret).toMatch(/^enc:v1:[0-9a-f]{8}:/)

      const [request] = receiver.requests
      expect(request!.method).toBe("POST")
      expect(request!.headers["content-type"]).toBe("application/json")
      expect(request!.headers["webhook-id"]).toBe(id)
      expect(request!.headers["user-agent"]).toMatch(/^webhook-worker\/\d+\.\d+\.\d+/)
      const body = JSON.parse(request!.body)
      expect(body.type).toBe("call.completed")
      expect(body.data).toEqual({ test: "data", n: 1 })
      expect(new Date(body.timestamp).toISOString()).toBe(body.timestamp)
      // A non-whsec secret is its UTF-8 bytes: the stock library verifies with the raw key.
      const verified = new Webhook(Buffer.from("test_secret"), { format: "raw" }).verify(request!.body, request!.headers as Record<string, string>)
      expect(verified).toEqual(body)

      const sql = yield* SqlClient.SqlClient
      const logs = yield* sql<{ attempt: number; outcome: string; response_status: number; response_body: string }>`
        SELECT attempt, outcome, response_status, response_body FROM webhook_delivery_log WHERE delivery_id = ${id}`
      expect(logs).toEqual([{ attempt: 1, outcome: "delivered", response_status: 200, response_body: "ok" }])
    })))

  it.live("a 503 is retried and then delivered, with the same webhook-id", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      let calls = 0
      receiver.respond = () => (++calls < 3 ? { status: 503 } : { status: 204 })
      const id = yield* insertRaw({ url: receiver.url() })
      const stop = yield* startWorker()
      const row = yield* eventually(statusIs(id, "delivered"), "delivered")
      yield* stop
      expect(row.attempt_count).toBe(3)
      expect(new Set(receiver.requests.map((r) => r.headers["webhook-id"]))).toEqual(new Set([id]))
      const final = yield* rowById(id)
      expect(final.last_response_status).toBe(204)
    })))

  it.live("AUDIT_LOG_ENABLED=false records outcomes but writes no webhook_delivery_log rows", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      let calls = 0
      receiver.respond = () => (++calls === 1 ? { status: 500 } : { status: 200 })
      const id = yield* insertRaw({ url: receiver.url() })
      const stop = yield* startWorker({ auditLogEnabled: false })
      const row = yield* eventually(statusIs(id, "delivered"), "delivered")
      yield* stop
      expect(row.attempt_count).toBe(2)
      const sql = yield* SqlClient.SqlClient
      const [logged] = yield* sql<{ n: string }>`SELECT count(*) AS n FROM webhook_delivery_log`
      expect(logged!.n).toBe("0")
    })))

  it.live("a defect in the claim loop is logged and the loop starts over: rows still go out", () =>
    scoped(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const id = yield* insertRaw({ url: receiver.url() })
      const logs: Array<string> = []
      let claims = 0
      const stop = yield* startWorker({}, {
        logs,
        wrapQueue: (queue) => ({
          ...queue,
          claim: (workerId, limit, leaseMs) =>
            ++claims === 1 ? Effect.die(new Error("a bug in the first claim")) : queue.claim(workerId, limit, leaseMs)
        })
      })
      yield* eventually(statusIs(id, "delivered"), "delivered after the loop restarted")
      yield* stop
      const failures = logs.map((line) => JSON.parse(line)).filter((line) => line.msg === "The claim loop failed; starting it again")
      expect(failures).toHaveLength(1)
      expect(failures[0]).toMatchObject({ level: "ERROR" })
      expect(JSON.stringify(failures[0])).toContain("a bug in the first claim")
      expect(receiver.requests).toHaveLength(1)
    })))
})
