import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect, Either, Fiber, Option, Redacted } from "effect"
import { spawnSync } from "node:child_process"
import Pg from "pg"
import { Webhook } from "standardwebhooks"
import { describe, expect } from "vitest"
import { rotateKey } from "../../src/crypto/Rotation.js"
import { makeReceiver, type ReceivedRequest } from "../utils/Receiver.js"
import { eventually, startWorker } from "../utils/WorkerHarness.js"
import {
  count,
  expectOk,
  expectUsageError,
  KEY_LOST,
  KEY_NEW,
  KEY_OLD,
  keyringOf,
  runCli,
  runCliOnTerminal,
  withDb
} from "./support.js"

const oldRing = keyringOf(KEY_OLD)
const newRing = keyringOf(KEY_NEW, [KEY_OLD])
const rotationEnv = (url: string) => ({
  DATABASE_URL: url,
  WEBHOOK_SECRET_ENCRYPTION_KEY: KEY_NEW,
  WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS: KEY_OLD
})

const whsec = (seed: string) => `whsec_${Buffer.from(`${seed}-key-material-0123456789`).toString("base64")}`

/** Queue rows for raw URLs, each with its own secret encrypted by `encrypt` (or plaintext). */
const insertUrlRows = (urls: ReadonlyArray<string>, secrets: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.unsafe<{ id: string }>(
      `INSERT INTO webhook_delivery_queue (url, secret, event_type, payload)
       SELECT u, s, 'rotation.test', '{"ok":true}' FROM unnest($1::text[], $2::text[]) AS t(u, s)
       RETURNING id::text AS id`,
      [urls, secrets]
    )).pipe(Effect.orDie, Effect.map((rows) => rows.map((row) => row.id)))

const secretsNotUnder = (ring: typeof newRing) =>
  count(
    `SELECT (SELECT count(*) FROM webhook_delivery_queue WHERE secret NOT LIKE $1)
          + (SELECT count(*) FROM partner_webhooks WHERE secret NOT LIKE $1 OR previous_secret NOT LIKE $1)`,
    [`enc:v1:${ring.currentId}:%`]
  )

const decryptAll = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ id: string; secret: string }>`SELECT id::text AS id, secret FROM webhook_delivery_queue ORDER BY id`).pipe(
    Effect.orDie,
    Effect.map((rows) => new Map(rows.map((row) => [row.id, Either.getOrThrow(newRing.decrypt(row.secret))])))
  )

describe("rotate-key", () => {
  it.live("under a running worker: no delivery lost, every signature right, nothing left under the old key", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const receiver = yield* makeReceiver
        // Slow enough that the worker is still delivering while the rotation runs.
        receiver.respond = () => ({ status: 200, delayMs: 25 })

        // Two endpoints under the old key, one of them in its own secret-rotation grace window.
        const ep1 = { secret: whsec("ep1"), previous: whsec("ep1-old") }
        const ep2 = { secret: whsec("ep2") }
        const [e1] = yield* sql<{ id: string }>`
          INSERT INTO partner_webhooks (url, secret, previous_secret, previous_secret_expires_at)
          VALUES (${receiver.url("/ep1")}, ${oldRing.encrypt(ep1.secret)}, ${oldRing.encrypt(ep1.previous)}, now() + interval '1 hour')
          RETURNING id::text AS id`
        const [e2] = yield* sql<{ id: string }>`
          INSERT INTO partner_webhooks (url, secret) VALUES (${receiver.url("/ep2")}, ${oldRing.encrypt(ep2.secret)})
          RETURNING id::text AS id`
        const backlog = 240
        yield* insertUrlRows(
          Array.from({ length: backlog }, (_, i) => receiver.url(`/u/${i}`)),
          Array.from({ length: backlog }, (_, i) => oldRing.encrypt(`secret-${i}`))
        )
        yield* sql.unsafe(
          `INSERT INTO webhook_delivery_queue (partner_webhook_id, event_type, payload)
           SELECT CASE WHEN g % 2 = 0 THEN $1::uuid ELSE $2::uuid END, 'rotation.test', '{"ok":true}'
           FROM generate_series(1, 60) g`,
          [e1!.id, e2!.id]
        )
        const total = backlog + 60 + 40

        // The workers were reloaded first (DEPLOYMENT.md): new key current, old key previous.
        const stop = yield* startWorker({
          encryptionKey: Option.some(Redacted.make(KEY_NEW)),
          previousEncryptionKeys: [Redacted.make(KEY_OLD)],
          maxConcurrentDeliveries: 4,
          batchSize: 4
        })
        const delivered = count("SELECT count(*) FROM webhook_delivery_queue WHERE status = 'delivered'")
        yield* eventually(Effect.map(delivered, (n) => n >= 20), "the first deliveries")
        const deliveredAtStart = yield* delivered

        // Producers keep writing meanwhile: raw SQL with plaintext secrets (the guide's insert),
        // and rows already under the new key (the CLI or library on the new configuration).
        const producer = yield* Effect.fork(Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) =>
          insertUrlRows([receiver.url(`/p/${i}`)], [i % 2 === 0 ? `secret-p${i}` : newRing.encrypt(`secret-p${i}`)]).pipe(
            Effect.zipRight(Effect.sleep("15 millis"))
          ), { discard: true }))

        const rotation = yield* runCli(["rotate-key", "--batch-size", "10"], rotationEnv(db.url))
        const summary = expectOk(rotation).trim()
        expect(summary).toMatch(new RegExp(
          `^Re-encrypted the secrets of 2 endpoints and \\d+ deliveries under key ${newRing.currentId}; none left under previous keys\\.$`
        ))
        expect(rotation.stderr).toBe("")
        yield* Fiber.join(producer)

        yield* eventually(Effect.map(delivered, (n) => n === total), `all ${total} delivered`, 90_000)
        yield* stop

        expect(deliveredAtStart).toBeLessThan(total)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE status <> 'delivered'")).toBe(0)
        const ids = yield* sql<{ id: string }>`SELECT id::text AS id FROM webhook_delivery_queue`
        const seen = new Set(receiver.requests.map((r) => String(r.headers["webhook-id"])))
        expect(ids.filter((row) => !seen.has(row.id))).toEqual([])

        // Every request is signed with its own secret: nothing was re-encrypted wrongly.
        const expectedSecrets = (request: ReceivedRequest): ReadonlyArray<string> => {
          if (request.path === "/ep1") return [ep1.secret, ep1.previous]
          if (request.path === "/ep2") return [ep2.secret]
          const match = /^\/([up])\/(\d+)$/.exec(request.path)!
          return [match[1] === "u" ? `secret-${match[2]}` : `secret-p${match[2]}`]
        }
        for (const request of receiver.requests) {
          for (const secret of expectedSecrets(request)) {
            const verifier = secret.startsWith("whsec_") ? new Webhook(secret) : new Webhook(Buffer.from(secret), { format: "raw" })
            expect(() => verifier.verify(request.body, request.headers as Record<string, string>), request.path).not.toThrow()
          }
        }
        expect(yield* secretsNotUnder(newRing)).toBe(0)
      })), 180_000)

  it.live("a crash midway loses nothing; running again continues and skips rows already done", () =>
    withDb(() =>
      Effect.gen(function*() {
        const ids = yield* insertUrlRows(
          Array.from({ length: 100 }, (_, i) => `https://partner.example/${i}`),
          Array.from({ length: 100 }, (_, i) => oldRing.encrypt(`secret-${i}`))
        )
        const crashed = yield* rotateKey(newRing, {
          batchSize: 10,
          onProgress: ({ done }) => (done >= 30 ? Effect.fail("crash" as const) : Effect.void)
        }).pipe(Effect.flip)
        expect(crashed).toBe("crash")
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE secret LIKE $1", [`enc:v1:${newRing.currentId}:%`])).toBe(30)
        expect(yield* count("SELECT count(*) FROM webhook_delivery_queue WHERE secret LIKE $1", [`enc:v1:${oldRing.currentId}:%`])).toBe(70)

        const progress: Array<number> = []
        const report = yield* rotateKey(newRing, { batchSize: 10, onProgress: ({ done }) => Effect.sync(() => progress.push(done)) })
        expect(report).toMatchObject({ reencrypted: { endpoints: 0, deliveries: 70 }, undecryptableCount: 0, remaining: 0 })
        expect(progress.at(-1)).toBe(70)
        const plain = yield* decryptAll
        expect(ids.map((id) => plain.get(id))).toEqual(ids.map((_, i) => `secret-${i}`))
        expect(yield* secretsNotUnder(newRing)).toBe(0)

        const idle = yield* rotateKey(newRing)
        expect(idle.reencrypted).toEqual({ endpoints: 0, deliveries: 0 })
      })))

  it.live("a row locked by someone else is waited for, and a value changed meanwhile is not overwritten", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const ids = yield* insertUrlRows(
          Array.from({ length: 20 }, (_, i) => `https://partner.example/${i}`),
          Array.from({ length: 20 }, (_, i) => oldRing.encrypt(`secret-${i}`))
        )
        const target = ids[7]!
        // Another session holds the row (as a worker's statement or an operator's update would)
        // and gives it a new value under the new key.
        const other = new Pg.Client({ connectionString: db.url })
        other.on("error", () => {})
        yield* Effect.promise(() => other.connect())
        yield* Effect.promise(() => other.query("BEGIN"))
        yield* Effect.promise(() =>
          other.query("UPDATE webhook_delivery_queue SET secret = $2 WHERE id = $1", [target, newRing.encrypt("changed-meanwhile")]))

        const running = yield* Effect.fork(rotateKey(newRing, { batchSize: 5 }))
        yield* Effect.sleep("700 millis")
        expect(Option.isNone(yield* Fiber.poll(running))).toBe(true)
        yield* Effect.promise(() => other.query("COMMIT").then(() => other.end()))
        const report = yield* Fiber.join(running)

        expect(report).toMatchObject({ reencrypted: { deliveries: 19 }, remaining: 0, undecryptableCount: 0 })
        const plain = yield* decryptAll
        expect(plain.get(target)).toBe("changed-meanwhile")
        expect(ids.filter((id) => id !== target).map((id) => plain.get(id))).toEqual(
          Array.from({ length: 20 }, (_, i) => `secret-${i}`).filter((_, i) => i !== 7)
        )
      })))

  it.live("undecryptable secrets are reported (exit 1) and left exactly as they were", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const lost = keyringOf(KEY_LOST).encrypt("under-a-lost-key")
        const good = oldRing.encrypt("fine")
        // Under a key we hold, but damaged: flip a byte of the ciphertext.
        const body = Buffer.from(good.slice(good.lastIndexOf(":") + 1), "base64")
        body[20] = body[20]! ^ 0xff
        const damaged = `${good.slice(0, good.lastIndexOf(":") + 1)}${body.toString("base64")}`
        const [lostId, damagedId, fineId, plainId] = yield* insertUrlRows(
          ["https://a.example", "https://b.example", "https://c.example", "https://d.example"],
          [lost, damaged, good, "plaintext-secret"]
        )
        const [endpoint] = yield* sql<{ id: string }>`
          INSERT INTO partner_webhooks (url, secret, previous_secret, previous_secret_expires_at)
          VALUES ('https://e.example', ${oldRing.encrypt("endpoint-secret")}, ${lost}, now() + interval '1 hour')
          RETURNING id::text AS id`

        const result = yield* runCli(["rotate-key"], rotationEnv(db.url))
        expect(result.code).toBe(1)
        expect(result.stdout.trim()).toBe(
          `Re-encrypted the secrets of 1 endpoint and 2 deliveries under key ${newRing.currentId}; 3 undecryptable (left unchanged).`
        )
        const lines = result.stderr.trim().split("\n")
        expect(lines).toHaveLength(4)
        expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^undecryptable: webhook_delivery_queue ${lostId} secret: encrypted with key ${keyringOf(KEY_LOST).currentId}`)))
        expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^undecryptable: webhook_delivery_queue ${damagedId} secret: authentication failed`)))
        expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^undecryptable: partner_webhooks ${endpoint!.id} previous_secret:`)))
        expect(lines[3]).toMatch(/^webhook-worker: 3 secrets could not be decrypted with any configured key and were left unchanged/)

        const rows = yield* sql<{ id: string; secret: string }>`SELECT id::text AS id, secret FROM webhook_delivery_queue`
        const byId = new Map(rows.map((row) => [row.id, row.secret]))
        expect(byId.get(lostId!)).toBe(lost)
        expect(byId.get(damagedId!)).toBe(damaged)
        expect(Either.getOrThrow(newRing.decrypt(byId.get(fineId!)!))).toBe("fine")
        expect(byId.get(fineId!)).toMatch(new RegExp(`^enc:v1:${newRing.currentId}:`))
        expect(Either.getOrThrow(newRing.decrypt(byId.get(plainId!)!))).toBe("plaintext-secret")
        const [ep] = yield* sql<{ secret: string; previous_secret: string }>`SELECT secret, previous_secret FROM partner_webhooks`
        expect(Either.getOrThrow(newRing.decrypt(ep!.secret))).toBe("endpoint-secret")
        expect(ep!.previous_secret).toBe(lost)

        // With the lost key found and configured, a second run finishes the job (the damaged one stays).
        const again = yield* runCli(["rotate-key", "--json"], { ...rotationEnv(db.url), WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS: `${KEY_OLD},${KEY_LOST}` })
        expect(again.code).toBe(1)
        const report = JSON.parse(again.stdout)
        expect(report).toMatchObject({ reencrypted: { endpoints: 1, deliveries: 1 }, undecryptableCount: 1, remaining: 0 })
        expect(report.undecryptable).toEqual([expect.objectContaining({ id: damagedId, column: "secret" })])
      })))

  // util-linux `script` gives the CLI a pseudo-terminal; without it there is no terminal to test.
  it.live.skipIf(spawnSync("script", ["--version"]).status !== 0)("on a terminal: a progress bar, then the summary line", () =>
    withDb((db) =>
      Effect.gen(function*() {
        yield* insertUrlRows(
          Array.from({ length: 300 }, (_, i) => `https://partner.example/${i}`),
          Array.from({ length: 300 }, (_, i) => oldRing.encrypt(`secret-${i}`))
        )
        const onTerminal = yield* runCliOnTerminal(["rotate-key", "--batch-size", "25"], rotationEnv(db.url))
        expect(onTerminal.code, onTerminal.output).toBe(0)
        const shown = onTerminal.output.split(/[\r\n]+/).map((line) => line.replace(/\u001b\[K/g, "").trim()).filter((l) => l !== "")
        expect(shown).toContain(`rotate-key [${"#".repeat(30)}] 300/300 100%`)
        expect(shown.at(-1)).toBe(`Re-encrypted the secrets of 0 endpoints and 300 deliveries under key ${newRing.currentId}; none left under previous keys.`)
      })))

  it.live("not on a terminal: only the summary line; configuration errors exit 2", () =>
    withDb((db) =>
      Effect.gen(function*() {
        yield* insertUrlRows(["https://partner.example/1"], [oldRing.encrypt("secret-1")])
        const piped = yield* runCli(["rotate-key"], rotationEnv(db.url))
        expect(piped.stdout).toBe(`Re-encrypted the secrets of 0 endpoints and 1 delivery under key ${newRing.currentId}; none left under previous keys.\n`)
        expect(piped.stderr).toBe("")
        const again = yield* runCli(["rotate-key"], rotationEnv(db.url))
        expect(again.stdout).toBe(`No secret needed re-encrypting under key ${newRing.currentId}; none left under previous keys.\n`)

        const noKey = yield* runCli(["rotate-key"], { DATABASE_URL: db.url, WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS: KEY_OLD })
        expectUsageError(noKey, "WEBHOOK_SECRET_ENCRYPTION_KEY")
        const badPrevious = yield* runCli(["rotate-key"], { ...rotationEnv(db.url), WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS: "short" })
        expectUsageError(badPrevious, "WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS")
        const badBatch = yield* runCli(["rotate-key", "--batch-size", "0"], rotationEnv(db.url))
        expectUsageError(badBatch, "--batch-size")
      })))
})
