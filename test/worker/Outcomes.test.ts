import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, Either, Layer, type Scope } from "effect"
import { describe, expect } from "vitest"
import { type AppSettings, decodeEncryptionKey } from "../../src/config/AppConfig.js"
import { Keyring } from "../../src/crypto/Keyring.js"
import { makeReceiver } from "../utils/Receiver.js"
import { layerPg } from "../utils/TestDatabase.js"
import { eventually, insertRaw, type QueueRow, rowById, startWorker, statusIs, TEST_KEY } from "../utils/WorkerHarness.js"

const withDb = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | PgClient.PgClient | Scope.Scope>) =>
  effect.pipe(Effect.provide(Layer.fresh(layerPg)), Effect.scoped)

const keyring = new Keyring(Either.getOrThrow(decodeEncryptionKey(TEST_KEY)), [])

const rows = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<QueueRow & { event_type: string }>`
    SELECT id::text, event_type, status, attempt_count, max_attempts, last_response_status, last_error, secret,
           delivered_at, next_retry_at, locked_by
    FROM webhook_delivery_queue`).pipe(
    Effect.map((all) => new Map(all.map((row) => [row.event_type, row]))),
    Effect.orDie
  )

const settled = (row: QueueRow | undefined) => row !== undefined && (row.status === "delivered" || row.status === "dead_letter")

describe("every outcome of SPEC.md, end to end", () => {
  it.live("responses and transport failures: delivered, retried, dead-lettered, endpoint disabled; good rows beside bad ones go out", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      const seen = new Map<string, number>()
      receiver.respond = (request) => {
        const n = (seen.get(request.path) ?? 0) + 1
        seen.set(request.path, n)
        switch (request.path) {
          case "/ok":
            return { status: 200 }
          case "/created":
            return { status: 201 }
          case "/always500":
            return { status: 500, body: "boom" }
          case "/flaky408":
            return n < 3 ? { status: 408 } : { status: 200 }
          case "/ratelimited":
            return n === 1 ? { status: 429, headers: { "retry-after": "1" } } : { status: 200 }
          case "/unavailable":
            return n === 1 ? { status: 503 } : { status: 202 }
          case "/gone":
            return { status: 410 }
          case "/redirect":
            return { status: 302, headers: { location: receiver.url("/ok") } }
          case "/bad":
            return { status: 400, body: "missing field" }
          case "/missing":
            return { status: 404 }
          case "/slow":
            return { status: 200, delayMs: 6000 }
          case "/reset":
            return n === 1 ? { destroy: true } : { status: 200 }
          // U+0000 in a body: PostgreSQL cannot store it, and it must not stop results being written.
          case "/nul-rejected":
            return { status: 400, body: "bad\u0000byte" }
          case "/nul-ok":
            return { status: 200, body: "ok\u0000" }
          default:
            return { status: 500 }
        }
      }
      const cases: Array<[string, string, number?]> = [
        ["ok", receiver.url("/ok")],
        ["created", receiver.url("/created")],
        ["always500", receiver.url("/always500"), 3],
        ["flaky408", receiver.url("/flaky408")],
        ["ratelimited", receiver.url("/ratelimited")],
        ["unavailable", receiver.url("/unavailable")],
        ["redirect", receiver.url("/redirect")],
        ["bad", receiver.url("/bad")],
        ["missing", receiver.url("/missing")],
        ["slow", receiver.url("/slow"), 2],
        ["reset", receiver.url("/reset")],
        ["nul_rejected", receiver.url("/nul-rejected")],
        ["nul_ok", receiver.url("/nul-ok")],
        ["refused", "http://127.0.0.1:1/hook", 2],
        ["dns", "http://no-such-host.invalid/hook", 2],
        ["invalid_url", "not a url"],
        ["ftp", "ftp://example.com/x"]
      ]
      for (const [eventType, url, maxAttempts] of cases) {
        yield* insertRaw({ url, eventType, ...(maxAttempts ? { maxAttempts } : {}) })
      }
      yield* insertRaw({ url: receiver.url("/ok"), eventType: "no_secret", secret: null })
      yield* insertRaw({ url: receiver.url("/ok"), eventType: "undecryptable", secret: "enc:v1:deadbeef:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" })
      // A registered endpoint that answers 410 Gone.
      const [endpoint] = yield* sql<{ id: string }>`
        INSERT INTO partner_webhooks (url, secret) VALUES (${receiver.url("/gone")}, ${keyring.encrypt("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")})
        RETURNING id::text`
      yield* sql`INSERT INTO webhook_delivery_queue (partner_webhook_id, event_type, payload) VALUES (${endpoint!.id}::uuid, 'gone', '{}')`

      const stop = yield* startWorker({ deliveryTimeoutMs: 2000, leaseMs: 10_000 })
      const all = yield* eventually(
        Effect.map(rows, (byType) => ([...byType.values()].every(settled) ? byType : undefined)),
        "every row settled",
        20_000
      )
      yield* stop

      const expectRow = (eventType: string, expected: Partial<QueueRow>) =>
        expect(all.get(eventType), eventType).toMatchObject(expected)

      expectRow("ok", { status: "delivered", attempt_count: 1, last_response_status: 200, last_error: null })
      expectRow("created", { status: "delivered", last_response_status: 201 })
      expectRow("always500", { status: "dead_letter", attempt_count: 3, last_response_status: 500, last_error: "HTTP 500" })
      expectRow("flaky408", { status: "delivered", attempt_count: 3, last_response_status: 200 })
      expectRow("ratelimited", { status: "delivered", attempt_count: 2 })
      expectRow("unavailable", { status: "delivered", attempt_count: 2, last_response_status: 202 })
      expectRow("redirect", { status: "dead_letter", attempt_count: 1, last_response_status: 302 })
      expectRow("bad", { status: "dead_letter", attempt_count: 1, last_response_status: 400 })
      expectRow("missing", { status: "dead_letter", attempt_count: 1, last_response_status: 404 })
      expectRow("slow", { status: "dead_letter", attempt_count: 2, last_response_status: null, last_error: "timed out after 2s (DELIVERY_TIMEOUT)" })
      expectRow("reset", { status: "delivered", attempt_count: 2 })
      expectRow("nul_rejected", { status: "dead_letter", attempt_count: 1, last_response_status: 400 })
      expectRow("nul_ok", { status: "delivered", attempt_count: 1, last_response_status: 200 })
      const bodies = yield* sql<{ event_type: string; response_body: string }>`
        SELECT q.event_type, l.response_body FROM webhook_delivery_log l JOIN webhook_delivery_queue q ON q.id = l.delivery_id
        WHERE q.event_type IN ('nul_rejected', 'nul_ok') ORDER BY q.event_type`
      expect(bodies.map((b) => [b.event_type, b.response_body])).toEqual([["nul_ok", "ok\uFFFD"], ["nul_rejected", "bad\uFFFDbyte"]])
      expectRow("refused", { status: "dead_letter", attempt_count: 2 })
      expect(all.get("refused")!.last_error).toMatch(/^connection failed \(ECONNREFUSED\)/)
      expectRow("dns", { status: "dead_letter", attempt_count: 2 })
      expect(all.get("dns")!.last_error).toMatch(/^DNS lookup of no-such-host\.invalid failed \((ENOTFOUND|EAI_AGAIN)\)$/)
      expectRow("invalid_url", { status: "dead_letter", attempt_count: 1, last_error: "invalid URL: not a valid URL" })
      expectRow("ftp", { status: "dead_letter", attempt_count: 1, last_error: "invalid URL: scheme ftp is not http or https" })
      expectRow("no_secret", { status: "dead_letter", attempt_count: 1, last_error: "undecryptable secret: the row has no secret and no registered endpoint" })
      expect(all.get("undecryptable")).toMatchObject({ status: "dead_letter", attempt_count: 1 })
      expect(all.get("undecryptable")!.last_error).toContain("encrypted with key deadbeef")
      expectRow("gone", { status: "dead_letter", attempt_count: 1, last_response_status: 410 })

      // 410 disabled the endpoint.
      const [disabled] = yield* sql<{ enabled: boolean; disabled_reason: string }>`SELECT enabled, disabled_reason FROM partner_webhooks WHERE id = ${endpoint!.id}::uuid`
      expect(disabled).toEqual({ enabled: false, disabled_reason: "HTTP 410 Gone from the receiver" })

      // Retry-After: 1 on the 429 held the retry back at least a second.
      const rateLimited = receiver.requests.filter((r) => r.path === "/ratelimited")
      expect(rateLimited[1]!.at - rateLimited[0]!.at).toBeGreaterThanOrEqual(950)
      // Redirects are not followed; permanent failures are tried once.
      expect(receiver.requests.filter((r) => r.path === "/redirect")).toHaveLength(1)
      expect(receiver.requests.filter((r) => r.path === "/bad")).toHaveLength(1)

      // One audit row per attempt, each with its reason.
      const logs = yield* sql<{ event_type: string; attempts: string; reasons: string }>`
        SELECT q.event_type, count(*) AS attempts, string_agg(l.reason, ',' ORDER BY l.attempt) AS reasons
        FROM webhook_delivery_log l JOIN webhook_delivery_queue q ON q.id = l.delivery_id GROUP BY q.event_type`
      const byType = new Map(logs.map((l) => [l.event_type, l]))
      expect(byType.get("flaky408")).toMatchObject({ attempts: "3", reasons: "http_408,http_408,delivered" })
      expect(byType.get("always500")).toMatchObject({ attempts: "3", reasons: "http_5xx,http_5xx,http_5xx" })
      expect(byType.get("slow")).toMatchObject({ attempts: "2", reasons: "timeout,timeout" })
      expect(byType.get("undecryptable")).toMatchObject({ attempts: "1", reasons: "undecryptable_secret" })
      const totalAttempts = [...all.values()].reduce((sum, row) => sum + row.attempt_count, 0)
      const [logged] = yield* sql<{ n: string }>`SELECT count(*) AS n FROM webhook_delivery_log`
      expect(Number(logged!.n)).toBe(totalAttempts)
    })), 40_000)

  it.live("503 with Retry-After: next_retry_at honours it; a Retry-After beyond RETRY_MAX_DELAY is capped at it", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const seen = new Map<string, number>()
      receiver.respond = (request) => {
        const n = (seen.get(request.path) ?? 0) + 1
        seen.set(request.path, n)
        if (n > 1) return { status: 200 }
        // Asks for 2 s (the schedule alone would say 50 ms), or for an hour (RETRY_MAX_DELAY is 3 s).
        return { status: 503, headers: { "retry-after": request.path === "/after2" ? "2" : "3600" } }
      }
      const honoured = yield* insertRaw({ url: receiver.url("/after2"), eventType: "after2" })
      const capped = yield* insertRaw({ url: receiver.url("/after3600"), eventType: "after3600" })
      const stop = yield* startWorker({ retryBaseDelayMs: 50, retryMaxDelayMs: 3000 })

      // Between the attempts: failed, and due when the receiver asked (or at the cap).
      const waiting = yield* eventually(
        Effect.map(rows, (byType) => {
          const [a, b] = [byType.get("after2"), byType.get("after3600")]
          return a?.status === "failed" && b?.status === "failed" ? [a, b] as const : undefined
        }),
        "both rows waiting for their retry"
      )
      const firstAttempt = (path: string) => receiver.requests.find((r) => r.path === path)!.at
      const [after2, after3600] = waiting
      expect(after2).toMatchObject({ id: honoured, attempt_count: 1, last_response_status: 503, last_error: "HTTP 503 (Retry-After 2s)" })
      expect(after3600).toMatchObject({ id: capped, attempt_count: 1, last_response_status: 503, last_error: "HTTP 503 (Retry-After 3600s)" })
      const dueAfter2 = after2.next_retry_at.getTime() - firstAttempt("/after2")
      expect(dueAfter2).toBeGreaterThanOrEqual(1950)
      expect(dueAfter2).toBeLessThan(3000)
      const dueAfter3600 = after3600.next_retry_at.getTime() - firstAttempt("/after3600")
      expect(dueAfter3600).toBeGreaterThanOrEqual(2950)
      expect(dueAfter3600).toBeLessThan(4000)

      // And the worker waited that long before trying again.
      for (const id of [honoured, capped]) yield* eventually(statusIs(id, "delivered"), `${id} delivered`)
      yield* stop
      const gap = (path: string) => {
        const [first, second] = receiver.requests.filter((r) => r.path === path)
        return second!.at - first!.at
      }
      expect(gap("/after2")).toBeGreaterThanOrEqual(1950)
      expect(gap("/after3600")).toBeGreaterThanOrEqual(2950)
      expect(gap("/after3600")).toBeLessThan(6000)
      const final = yield* rows
      expect(final.get("after2")).toMatchObject({ status: "delivered", attempt_count: 2, last_response_status: 200 })
      expect(final.get("after3600")).toMatchObject({ status: "delivered", attempt_count: 2, last_response_status: 200 })
    })), 30_000)

  it.live("blocked destinations are dead-lettered at once, never retried", () =>
    withDb(Effect.gen(function*() {
      const receiver = yield* makeReceiver
      const loopback = yield* insertRaw({ url: receiver.url("/ok"), eventType: "loopback" })
      const local = yield* insertRaw({ url: `http://localhost:${receiver.port}/ok`, eventType: "localhost" })
      const metadata = yield* insertRaw({ url: "http://169.254.169.254/latest/meta-data/", eventType: "metadata" })
      const stop = yield* startWorker({ allowPrivateNetworks: false })
      const byType = yield* eventually(
        Effect.map(rows, (all) => ([...all.values()].every(settled) ? all : undefined)),
        "blocked rows settled"
      )
      yield* stop
      expect(receiver.requests).toHaveLength(0)
      for (const id of [loopback, local, metadata]) expect([...byType.values()].find((r) => r.id === id)).toMatchObject({ status: "dead_letter", attempt_count: 1 })
      expect(byType.get("loopback")!.last_error).toBe("blocked destination: 127.0.0.1 a loopback address (set WEBHOOK_ALLOW_PRIVATE_NETWORKS=true to allow)")
      expect(byType.get("localhost")!.last_error).toMatch(/^blocked destination: localhost is (127\.0\.0\.1|::1), a loopback address/)
      expect(byType.get("metadata")!.last_error).toContain("cloud metadata address")
    })))

  it.live("a crashed worker's expired lease is claimed again; with no attempts left it is dead-lettered", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      const [orphan] = yield* sql<{ id: string }>`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, max_attempts, locked_by, locked_until, next_retry_at)
        VALUES (${receiver.url("/ok")}, 's', 'orphan', '{}', 'processing', 1, 5, 'dead-worker', now() - interval '1 second', now() - interval '1 second')
        RETURNING id::text`
      const [exhausted] = yield* sql<{ id: string }>`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, max_attempts, locked_by, locked_until, next_retry_at)
        VALUES (${receiver.url("/ok")}, 's', 'exhausted', '{}', 'processing', 3, 3, 'dead-worker', now() - interval '1 second', now() - interval '1 second')
        RETURNING id::text`
      const stop = yield* startWorker()
      const byType = yield* eventually(Effect.map(rows, (all) => ([...all.values()].every(settled) ? all : undefined)), "leases recovered")
      yield* stop
      expect(byType.get("orphan")).toMatchObject({ id: orphan!.id, status: "delivered", attempt_count: 2 })
      // Not counted as a fourth attempt: attempt_count never exceeds max_attempts.
      expect(byType.get("exhausted")).toMatchObject({ id: exhausted!.id, status: "dead_letter", attempt_count: 3 })
      expect(byType.get("exhausted")!.last_error).toMatch(/^no attempts left/)
      expect(receiver.requests.map((r) => r.headers["webhook-id"])).toEqual([orphan!.id])
      // Never sent, yet its plaintext secret does not stay at rest.
      const secrets = yield* sql<{ secret: string }>`SELECT secret FROM webhook_delivery_queue WHERE id = ${exhausted!.id}`
      expect(secrets[0]!.secret).toMatch(/^enc:v1:/)
    })))

  it.live("the guide's manual retry (UPDATE … SET status = 'pending' on a dead letter) is dlq retry's: a fresh attempt budget, due at once", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      let partnerFixed = false
      receiver.respond = (request) => (request.path === "/fixed" && partnerFixed ? { status: 200 } : { status: 500 })
      const fixed = yield* insertRaw({ url: receiver.url("/fixed"), eventType: "fixed", maxAttempts: 1 })
      const broken = yield* insertRaw({ url: receiver.url("/broken"), eventType: "broken", maxAttempts: 2 })
      const first = yield* startWorker()
      for (const id of [fixed, broken]) yield* eventually(statusIs(id, "dead_letter"), "dead-lettered")
      yield* first
      const sent = (path: string) => receiver.requests.filter((r) => r.path === path).length
      expect([sent("/fixed"), sent("/broken")]).toEqual([1, 2])

      // The partner fixed one endpoint; the operator resets both rows by hand, as the guide says.
      partnerFixed = true
      yield* sql`UPDATE webhook_delivery_queue SET status = 'pending' WHERE status = 'dead_letter'`
      const reset = yield* sql<{ attempt_count: number; due: boolean; locked_by: string | null }>`
        SELECT attempt_count, next_retry_at <= now() AS due, locked_by FROM webhook_delivery_queue`
      // Due at once (not when the last claim's lease would have ended), every attempt back.
      expect(reset).toEqual([{ attempt_count: 0, due: true, locked_by: null }, { attempt_count: 0, due: true, locked_by: null }])
      const stop = yield* startWorker()
      yield* eventually(statusIs(fixed, "delivered"), "delivered after the manual retry")
      yield* eventually(Effect.map(statusIs(broken, "dead_letter"), (dead) => (dead && sent("/broken") === 4) || undefined), "the broken one's budget used again")
      yield* stop
      const byType = yield* rows
      expect(byType.get("fixed")).toMatchObject({ status: "delivered", attempt_count: 1 })
      expect(byType.get("broken")).toMatchObject({ status: "dead_letter", attempt_count: 2, last_response_status: 500 })
      expect(byType.get("broken")!.last_error).not.toMatch(/no attempts left/)
      expect(receiver.requests.filter((r) => r.headers["webhook-id"] === fixed)).toHaveLength(2)

      // An UPDATE that sets the count or the time itself gets what it set.
      yield* sql`UPDATE webhook_delivery_queue SET status = 'pending', attempt_count = 1, next_retry_at = now() + interval '1 hour' WHERE id = ${broken}`
      const [kept] = yield* sql<{ attempt_count: number; later: boolean }>`
        SELECT attempt_count, next_retry_at > now() + interval '59 minutes' AS later FROM webhook_delivery_queue WHERE id = ${broken}`
      expect(kept).toEqual({ attempt_count: 1, later: true })
    })))

  it.live("never more than max_attempts sends: a last attempt cut short by shutdown is dead-lettered by the next worker, and one with no attempts left is not held ahead and handed back", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      let hang = true
      receiver.respond = () => ({ status: 200, delayMs: hang ? 60_000 : 3000 })
      // Shutdown after the grace period hands the running last attempt back, still counted.
      const last = yield* insertRaw({ url: receiver.url("/last"), eventType: "last", maxAttempts: 1 })
      const first = yield* startWorker({ shutdownGracePeriodMs: 200 })
      yield* receiver.waitForRequests(1)
      yield* first
      const [handedBack] = yield* sql<{ status: string; attempt_count: number }>`SELECT status, attempt_count FROM webhook_delivery_queue WHERE id = ${last}`
      expect(handedBack).toEqual({ status: "pending", attempt_count: 1 })

      // One slot, held by a slow delivery, and an orphaned row with no attempts left claimed in
      // the same batch: it is dead-lettered at once, not held for the slot and handed back.
      hang = false
      const slow = yield* insertRaw({ url: receiver.url("/slow"), eventType: "slow" })
      const [orphan] = yield* sql<{ id: string }>`
        INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, attempt_count, max_attempts, locked_by, locked_until, next_retry_at)
        VALUES (${receiver.url("/orphan")}, 's', 'orphan', '{}', 'processing', 2, 2, 'dead-worker', now() - interval '1 second', now())
        RETURNING id::text`
      const second = yield* startWorker({ maxConcurrentDeliveries: 1, deliveryTimeoutMs: 5000, leaseMs: 8000 })
      yield* eventually(statusIs(last, "dead_letter"), "the cut-short last attempt dead-lettered")
      yield* eventually(statusIs(orphan!.id, "dead_letter"), "the orphan dead-lettered")
      // Past the 1.5 s a row may wait ahead for a slot ((lease − timeout) / 2), and the slow one done.
      yield* eventually(statusIs(slow, "delivered"), "the slow one delivered", 10_000)
      yield* second
      const byType = yield* rows
      expect(byType.get("last")!.last_error).toMatch(/^no attempts left: attempt 1 was cut short .*its outcome is unknown$/)
      expect(byType.get("orphan")).toMatchObject({ status: "dead_letter", attempt_count: 2 })
      // Neither was sent again.
      expect(receiver.requests.map((r) => r.path)).toEqual(["/last", "/slow"])
    })))

  it.live("a producer's plaintext secret is encrypted once claimed, even when the row is handed back unattempted", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      receiver.respond = () => ({ status: 200, delayMs: 60_000 })
      const busy = yield* insertRaw({ url: receiver.url("/busy"), secret: "plain-busy-s3cret" })
      const waiting = yield* insertRaw({ url: receiver.url("/waiting"), secret: "plain-waiting-s3cret" })
      // One slot, held by the first row: the second waits in the worker, then goes back at shutdown.
      const stop = yield* startWorker({ maxConcurrentDeliveries: 1, shutdownGracePeriodMs: 100 })
      yield* receiver.waitForRequests(1)
      yield* stop
      const [row] = yield* sql<{ status: string; attempt_count: number; secret: string }>`
        SELECT status, attempt_count, secret FROM webhook_delivery_queue WHERE id = ${waiting}`
      expect(row).toMatchObject({ status: "pending", attempt_count: 0 })
      expect(row!.secret).toMatch(/^enc:v1:/)
      expect(keyring.decrypt(row!.secret)).toEqual(Either.right("plain-waiting-s3cret"))
      expect(receiver.requests.map((r) => r.headers["webhook-id"])).toEqual([busy])
    })))

  it.live("a reload that raises DELIVERY_TIMEOUT does not let a row claimed under the old lease stay in flight past it", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      receiver.respond = (request) => ({ status: 200, delayMs: request.path === "/first" ? 1000 : 30_000 })
      yield* insertRaw({ url: receiver.url("/first"), eventType: "first" })
      const late = yield* insertRaw({ url: receiver.url("/late"), eventType: "late" })
      // One slot and a 5 s lease: the second row waits ahead while the first is sent.
      let reloaded: Partial<AppSettings> = {}
      const stop = yield* startWorker({ maxConcurrentDeliveries: 1, deliveryTimeoutMs: 2000, leaseMs: 5000 }, { reloaded: () => reloaded })
      yield* receiver.waitForRequests(1)
      // The reload: attempts may take 60 s now, and new claims get a 240 s lease.
      reloaded = { deliveryTimeoutMs: 60_000, leaseMs: 240_000 }
      yield* eventually(Effect.sync(() => receiver.requests.some((r) => r.path === "/late") || undefined), "the late row sent")
      // The late row's attempt ends before its 5 s lease does, recorded by this worker as a
      // timeout (not lost to another worker's claim of an expired lease).
      const settledAt = yield* eventually(
        Effect.map(rowById(late), (row) => (row.status === "failed" ? Date.now() : undefined)),
        "the late attempt cut at its lease",
        10_000
      )
      const sentAt = receiver.requests.find((r) => r.path === "/late")!.at
      expect(settledAt - sentAt).toBeLessThan(5000)
      yield* stop
      const [row] = yield* sql<{ attempt_count: number; last_error: string }>`SELECT attempt_count, last_error FROM webhook_delivery_queue WHERE id = ${late}`
      expect(row!.attempt_count).toBe(1)
      expect(row!.last_error).toMatch(/timed out|timeout/i)
    })))

  it.live("a result PostgreSQL refuses does not hold back the others: it is stored without its response body", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // Stands for any value PostgreSQL might refuse in one result of a batch.
      yield* sql.unsafe(`CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.response_body LIKE '%poison%' THEN RAISE EXCEPTION 'refused for the test' USING ERRCODE = '22023'; END IF;
          RETURN NEW;
        END $$`)
      yield* sql.unsafe("CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_delivery_log FOR EACH ROW EXECUTE FUNCTION refuse_poison()")
      const receiver = yield* makeReceiver
      receiver.respond = (request) => (request.path === "/poison" ? { status: 200, body: "poison" } : { status: 200, body: "fine" })
      for (let i = 0; i < 20; i++) yield* insertRaw({ url: receiver.url(i === 7 ? "/poison" : "/fine"), eventType: `e${i}` })
      const stop = yield* startWorker({ batchSize: 20, maxConcurrentDeliveries: 20 })
      yield* eventually(
        Effect.map(rows, (byType) => byType.size === 20 && [...byType.values()].every((row) => row.status === "delivered") || undefined),
        "every row delivered",
        15_000
      )
      yield* stop
      expect(receiver.requests).toHaveLength(20)
      const logged = yield* sql<{ event_type: string; response_body: string | null; error: string | null }>`
        SELECT q.event_type, l.response_body, l.error FROM webhook_delivery_log l JOIN webhook_delivery_queue q ON q.id = l.delivery_id`
      expect(logged).toHaveLength(20)
      for (const entry of logged) {
        expect(entry, entry.event_type).toMatchObject({ response_body: entry.event_type === "e7" ? null : "fine", error: null })
      }
    })))

  it.live("a result PostgreSQL refuses even without its text is left to its lease; the rest of its batch is recorded", () =>
    withDb(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const receiver = yield* makeReceiver
      for (let i = 0; i < 20; i++) yield* insertRaw({ url: receiver.url("/fine"), eventType: `e${i}` })
      const [doomed] = yield* sql<{ id: string }>`SELECT id::text FROM webhook_delivery_queue WHERE event_type = 'e7'`
      yield* sql.unsafe(`CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.delivery_id = '${doomed!.id}' THEN RAISE EXCEPTION 'refused for the test' USING ERRCODE = '23514'; END IF;
          RETURN NEW;
        END $$`)
      yield* sql.unsafe("CREATE TRIGGER refuse_one BEFORE INSERT ON webhook_delivery_log FOR EACH ROW EXECUTE FUNCTION refuse_one()")
      const stop = yield* startWorker({ batchSize: 20, maxConcurrentDeliveries: 20, leaseMs: 60_000 })
      const all = yield* eventually(
        Effect.map(rows, (byType) => [...byType.values()].filter((row) => row.status === "delivered").length === 19 ? byType : undefined),
        "the 19 others delivered",
        15_000
      )
      yield* stop
      expect(all.get("e7")).toMatchObject({ status: "processing", attempt_count: 1 })
      expect(receiver.requests).toHaveLength(20)
    })))
})
