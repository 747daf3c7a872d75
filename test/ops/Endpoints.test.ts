import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { Webhook } from "standardwebhooks"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect } from "vitest"
import { makeReceiver, type ReceivedRequest } from "../utils/Receiver.js"
import { eventually, startWorker, statusIs } from "../utils/WorkerHarness.js"
import { cliEnv, count, expectOk, expectUsageError, fields, runCli, withDb } from "./support.js"

const verifies = (secret: string, request: ReceivedRequest) => {
  try {
    new Webhook(secret).verify(request.body, request.headers as Record<string, string>)
    return true
  } catch {
    return false
  }
}

const signatures = (request: ReceivedRequest) => String(request.headers["webhook-signature"]).split(" ")

describe("endpoints", () => {
  it.live("add generates a whsec_ secret, stores it encrypted, prints it once; list never shows it", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const env = cliEnv(db.url)
        const added = yield* runCli(["endpoints", "add", "--url", "https://partner.example/hooks", "--user-id", "u-1", "--event-types", "order.created, order.paid,order.created"], env)
        const { id, secret } = fields(expectOk(added))
        expect(id).toMatch(/^[0-9a-f-]{36}$/)
        // whsec_ + base64 of 32 random bytes.
        expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/)
        expect(Buffer.from(secret!.slice(6), "base64")).toHaveLength(32)
        expect(added.stderr).toContain("not shown again")

        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ secret: string; event_types: Array<string>; userId: string; enabled: boolean }>`
          SELECT secret, event_types, "userId", enabled FROM partner_webhooks WHERE id = ${id!}`
        expect(row!.secret).toMatch(/^enc:v1:[0-9a-f]{8}:/)
        expect(row!.secret).not.toContain(secret!.slice(6, 20))
        expect(row!.event_types).toEqual(["order.created", "order.paid"])
        expect(row).toMatchObject({ userId: "u-1", enabled: true })

        // A given secret (24 bytes, the Standard Webhooks minimum) is kept as given; without
        // --event-types the endpoint takes every type.
        const chosen = "whsec_YS1wYXJ0bmVyLWNob3Nlbi1zZWNyZXQh"
        const given = yield* runCli(["endpoints", "add", "--url", "http://other.example/in", "--secret", chosen, "--json"], env)
        const json = JSON.parse(expectOk(given))
        expect(json).toMatchObject({ url: "http://other.example/in", secret: chosen, event_types: null, enabled: true })

        const table = expectOk(yield* runCli(["endpoints", "list"], env))
        expect(table).toContain(id)
        expect(table).toContain("order.created,order.paid")
        expect(table).not.toContain("whsec_")
        expect(table).not.toContain("enc:v1")
        const listed = JSON.parse(expectOk(yield* runCli(["endpoints", "list", "--json"], env))) as Array<Record<string, unknown>>
        expect(listed.map((endpoint) => endpoint.id)).toEqual([id, json.id])
        expect(JSON.stringify(listed)).not.toMatch(/whsec_|enc:v1|"secret"/)
      })))

  it.live("bad input: exit 2 and one line naming the flag, nothing written", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const env = cliEnv(db.url)
        const cases: ReadonlyArray<[ReadonlyArray<string>, string]> = [
          [["endpoints", "add"], "--url"],
          [["endpoints", "add", "--url", "not a url"], "--url"],
          [["endpoints", "add", "--url", "ftp://partner.example/x"], "--url"],
          [["endpoints", "add", "--url", "https://p.example", "--event-types", "a,,b"], "--event-types"],
          [["endpoints", "add", "--url", "https://p.example", "--secret", "whsec_***"], "--secret"],
          // Standard Webhooks: whsec_ and the base64 of 24 to 64 bytes.
          [["endpoints", "add", "--url", "https://p.example", "--secret", "whsec_c2VjcmV0LWJ5dGVz"], "--secret"],
          [["endpoints", "add", "--url", "https://p.example", "--secret", `whsec_${Buffer.alloc(23, 5).toString("base64")}`], "--secret"],
          [["endpoints", "add", "--url", "https://p.example", "--secret", `whsec_${Buffer.alloc(65, 6).toString("base64")}`], "--secret"],
          [["endpoints", "add", "--url", "https://p.example", "--secret", "a-long-plain-text-secret-without-the-prefix"], "--secret"],
          [["endpoints", "add", "--url", "https://p.example", "--secret", "whsec_YS1wYXJ0bmVyLWNob3Nlbi1zZWNyZXQh="], "--secret"],
          [["endpoints", "add", "--url", "https://p.example", "--user-id", ""], "--user-id"],
          [["endpoints", "disable", "not-a-uuid"], "ID"],
          [["endpoints", "rotate-secret", "x"], "ID"],
          [["endpoints", "rotate-secret", "00000000-0000-4000-8000-000000000000", "--grace", "-1"], "--grace"],
          [["endpoints", "rotate-secret", "00000000-0000-4000-8000-000000000000", "--secret", "whsec_"], "--secret"],
          [["endpoints", "rotate-secret", "00000000-0000-4000-8000-000000000000", "--secret", "whsec_bmV3LXNlY3JldA=="], "--secret"]
        ]
        const results = yield* Effect.forEach(cases, ([args]) => runCli(args, env), { concurrency: 3 })
        for (const [index, result] of results.entries()) expectUsageError(result, cases[index]![1])

        // A missing key is a configuration error naming the variable.
        const noKey = yield* runCli(["endpoints", "add", "--url", "https://p.example"], { DATABASE_URL: db.url })
        expectUsageError(noKey, "WEBHOOK_SECRET_ENCRYPTION_KEY")
        expect(yield* count("SELECT count(*) FROM partner_webhooks")).toBe(0)

        // A well-formed id that does not exist is a runtime failure (exit 1), still one line.
        const unknown = yield* runCli(["endpoints", "disable", "00000000-0000-4000-8000-000000000000"], env)
        expect(unknown.code).toBe(1)
        expect(unknown.stderr.trim()).toBe("webhook-worker: endpoint 00000000-0000-4000-8000-000000000000 does not exist")
      })))

  it.live("enqueue --endpoint honours the endpoint's event types, end to end, signed with its secret, and needs no encryption key", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const env = cliEnv(db.url)
        const receiver = yield* makeReceiver
        const { id, secret } = fields(expectOk(yield* runCli(["endpoints", "add", "--url", receiver.url("/orders"), "--event-types", "order.created,order.paid"], env)))

        const refused = yield* runCli(["enqueue", "--endpoint", id!, "--event-type", "user.deleted", "--payload", "{}"], env)
        expect(refused.code).toBe(1)
        expect(refused.stderr).toContain("does not subscribe to user.deleted")
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue")).toBe(0)

        // The endpoint's secret is already stored: a producer that only enqueues to endpoints needs no key.
        const keyless = cliEnv(db.url, { WEBHOOK_SECRET_ENCRYPTION_KEY: undefined })
        const queued = expectOk(yield* runCli(["enqueue", "--endpoint", id!, "--event-type", "order.paid", "--payload", `{"order":7}`], keyless)).trim()
        // A URL's secret is stored encrypted, so that one still needs the key.
        const urlWithoutKey = yield* runCli(["enqueue", "--url", receiver.url("/orders"), "--secret", "s", "--event-type", "order.paid", "--payload", "{}"], keyless)
        expect(urlWithoutKey.code).toBe(2)
        expect(urlWithoutKey.stderr).toMatch(/^webhook-worker: WEBHOOK_SECRET_ENCRYPTION_KEY: /)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue")).toBe(1)
        const stop = yield* startWorker()
        yield* eventually(statusIs(queued, "delivered"), "delivered")
        yield* stop
        const [request] = receiver.requests
        expect(request!.path).toBe("/orders")
        expect(request!.headers["webhook-id"]).toBe(queued)
        expect(JSON.parse(request!.body)).toMatchObject({ type: "order.paid", data: { order: 7 } })
        expect(verifies(secret!, request!)).toBe(true)

        // A disabled endpoint takes nothing new.
        expectOk(yield* runCli(["endpoints", "disable", id!, "--reason", "partner migrating"], env))
        const disabled = yield* runCli(["enqueue", "--endpoint", id!, "--event-type", "order.paid", "--payload", "{}"], env)
        expect(disabled.code).toBe(1)
        expect(disabled.stderr).toContain("is disabled (partner migrating)")
      })))

  it.live("disable dead-letters queued deliveries as they fall due; enable and dlq retry --endpoint bring them back", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const env = cliEnv(db.url)
        const receiver = yield* makeReceiver
        const { id } = fields(expectOk(yield* runCli(["endpoints", "add", "--url", receiver.url("/p")], env)))
        const other = fields(expectOk(yield* runCli(["endpoints", "add", "--url", receiver.url("/other")], env))).id!
        const queued = expectOk(yield* runCli(["enqueue", "--endpoint", id!, "--event-type", "a.b", "--payload", "{}"], env)).trim()
        const elsewhere = expectOk(yield* runCli(["enqueue", "--endpoint", other, "--event-type", "a.b", "--payload", "{}"], env)).trim()

        const disabled = expectOk(yield* runCli(["endpoints", "disable", id!], env))
        expect(disabled).toContain(`Disabled endpoint ${id}.`)
        expect(disabled).toContain("1 queued delivery will be dead-lettered")
        expect(expectOk(yield* runCli(["endpoints", "disable", id!], env))).toContain("was already disabled (disabled by an operator)")
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ enabled: boolean; disabled_reason: string; disabled_at: Date | null }>`
          SELECT enabled, disabled_reason, disabled_at FROM partner_webhooks WHERE id = ${id!}`
        expect(row).toMatchObject({ enabled: false, disabled_reason: "disabled by an operator" })
        expect(row!.disabled_at).toBeInstanceOf(Date)

        const stop = yield* startWorker()
        yield* eventually(statusIs(queued, "dead_letter"), "dead-lettered")
        yield* eventually(statusIs(elsewhere, "delivered"), "other endpoint delivered")
        expect(receiver.requests.map((r) => r.path)).toEqual(["/other"])

        // Run with an env file (as on a systemd host), the hint is a command to paste as it is.
        const dir = mkdtempSync(join(tmpdir(), "ww-endpoints-"))
        yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
        const envFile = join(dir, "webhook-worker.env")
        writeFileSync(envFile, `DATABASE_URL=${db.url}\nWEBHOOK_SECRET_ENCRYPTION_KEY=${env.WEBHOOK_SECRET_ENCRYPTION_KEY}\n`)
        const enabled = expectOk(yield* runCli(["endpoints", "enable", id!, "--env-file", envFile], {}))
        expect(enabled).toContain(`Enabled endpoint ${id}.`)
        expect(enabled).toContain(`\`webhook-worker dlq retry --all --endpoint ${id} --env-file ${envFile}\` requeues them.`)
        expect(expectOk(yield* runCli(["dlq", "retry", "--all", "--endpoint", id!], env))).toContain("Requeued 1 dead letter.")
        yield* eventually(statusIs(queued, "delivered"), "delivered after enable")
        yield* stop
        const [after] = yield* sql<{ enabled: boolean; disabled_reason: string | null; disabled_at: Date | null }>`
          SELECT enabled, disabled_reason, disabled_at FROM partner_webhooks WHERE id = ${id!}`
        expect(after).toEqual({ enabled: true, disabled_reason: null, disabled_at: null })
      })))

  it.live("rotate-secret: both secrets sign during the grace window; with --grace 0 only the new one", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const env = cliEnv(db.url)
        const receiver = yield* makeReceiver
        const graced = fields(expectOk(yield* runCli(["endpoints", "add", "--url", receiver.url("/graced")], env)))
        const abrupt = fields(expectOk(yield* runCli(["endpoints", "add", "--url", receiver.url("/abrupt")], env)))

        const rotated = yield* runCli(["endpoints", "rotate-secret", graced.id!, "--grace", "2"], env)
        const next = fields(expectOk(rotated))
        expect(next.id).toBe(graced.id)
        expect(next.secret).toMatch(/^whsec_/)
        expect(next.secret).not.toBe(graced.secret)
        expect(rotated.stderr).toMatch(/Until \d{4}-\d\d-\d\dT[\d:.]+Z every request carries two signatures/)
        const abruptNext = fields(expectOk(yield* runCli(["endpoints", "rotate-secret", abrupt.id!, "--grace", "0", "--secret", "whsec_YS1uZXctc2VjcmV0LWZvci10aGUtcGFydG5lci0zMmI="], env)))
        expect(abruptNext.secret).toBe("whsec_YS1uZXctc2VjcmV0LWZvci10aGUtcGFydG5lci0zMmI=")

        const listed = JSON.parse(expectOk(yield* runCli(["endpoints", "list", "--json"], env))) as Array<{ id: string; previous_secret_until: string | null }>
        const until = new Date(listed.find((e) => e.id === graced.id)!.previous_secret_until!).getTime()
        expect(until - Date.now()).toBeGreaterThan(1.9 * 3600_000)
        expect(until - Date.now()).toBeLessThanOrEqual(2 * 3600_000)
        expect(listed.find((e) => e.id === abrupt.id)!.previous_secret_until).toBeNull()

        const a = expectOk(yield* runCli(["enqueue", "--endpoint", graced.id!, "--event-type", "x.y", "--payload", "{}"], env)).trim()
        const b = expectOk(yield* runCli(["enqueue", "--endpoint", abrupt.id!, "--event-type", "x.y", "--payload", "{}"], env)).trim()
        const stop = yield* startWorker()
        yield* eventually(statusIs(a, "delivered"), "graced delivered")
        yield* eventually(statusIs(b, "delivered"), "abrupt delivered")
        yield* stop

        const toGraced = receiver.requests.find((r) => r.path === "/graced")!
        expect(signatures(toGraced)).toHaveLength(2)
        expect(verifies(next.secret!, toGraced)).toBe(true)
        expect(verifies(graced.secret!, toGraced)).toBe(true)
        const toAbrupt = receiver.requests.find((r) => r.path === "/abrupt")!
        expect(signatures(toAbrupt)).toHaveLength(1)
        expect(verifies(abruptNext.secret!, toAbrupt)).toBe(true)
        expect(verifies(abrupt.secret!, toAbrupt)).toBe(false)

        // Rotating again inside the window drops the oldest secret, and says so.
        const again = yield* runCli(["endpoints", "rotate-secret", graced.id!], env)
        expectOk(again)
        expect(again.stderr).toContain("grace window was still open")
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ secret: string; previous_secret: string }>`SELECT secret, previous_secret FROM partner_webhooks WHERE id = ${graced.id!}`
        expect(row!.secret).toMatch(/^enc:v1:/)
        expect(row!.previous_secret).toMatch(/^enc:v1:/)
      })))
})
