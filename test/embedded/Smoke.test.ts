import { it } from "@effect/vitest"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import Pg from "pg"
import { describe, expect } from "vitest"
import { clientOptions, connectionUrl, MAX_CONNECTIONS } from "../../src/db/EmbeddedDatabase.js"
import { assertBuilt, jsonLines, type Running, runCli, spawnCli, tempDir } from "./support.js"

/** Waits for a JSON line of `running` that satisfies `matches`. */
const jsonLine = (running: Running, what: string, matches: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (true) {
      const found = jsonLines(running.lines).find(matches)
      if (found !== undefined) return found
      if (Date.now() > deadline || running.process.exitCode !== null) {
        return yield* Effect.die(new Error(`no ${what}; stdout:\n${running.lines.join("\n")}\nstderr:\n${running.stderr.join("")}`))
      }
      yield* Effect.sleep("50 millis")
    }
  })

const delivered = (worker: Running, id: string) =>
  jsonLine(worker, `delivery of ${id}`, (line) => line.msg === "Delivering webhook" && line.delivery_id === id && line.outcome === "delivered")

const received = (receiver: Running, id: string) => jsonLine(receiver, `request ${id} at the receiver`, (line) => line.webhookId === id)

/**
 * How many more connections the embedded server on `port` accepts: it serves MAX_CONNECTIONS
 * and refuses the next with "too many clients" (53300), so this shows how many the worker holds.
 */
const freeConnections = (port: number) =>
  Effect.promise(async () => {
    const clients: Array<Pg.Client> = []
    try {
      while (clients.length <= MAX_CONNECTIONS) {
        const client = new Pg.Client({ connectionString: connectionUrl(port) })
        client.on("error", () => undefined)
        const refused = await client.connect().then(() => null, (error: { code?: string }) => error.code ?? String(error))
        if (refused !== null) {
          expect(refused).toBe("53300")
          break
        }
        clients.push(client)
      }
      return clients.length
    } finally {
      await Promise.all(clients.map((client) => client.end().catch(() => undefined)))
    }
  })

const statusCounts = (cwd: string) =>
  Effect.map(runCli(cwd, ["stats", "--json"]), (result) => {
    expect(result.code, result.stderr).toBe(0)
    return Object.fromEntries((JSON.parse(result.stdout) as Array<{ status: string; count: number }>).map((row) => [row.status, row.count]))
  })

describe("embedded database: no DATABASE_URL, real processes", () => {
  it.live("first run: worker + enqueue from another process + receive; restart keeps the data; a second worker is refused", () =>
    Effect.gen(function*() {
      assertBuilt()
      const cwd = yield* tempDir("ww-embedded-smoke-")
      const dataDir = join(cwd, ".data")
      const secret = `whsec_${randomBytes(24).toString("base64")}`

      const receiver = yield* spawnCli(cwd, ["receive", "--port", "0", "--secret", secret, "--json"])
      const url = String((yield* jsonLine(receiver, "receiver address", (line) => typeof line.listening === "string")).listening)

      // First start: creates the database in ./.data/pglite (initdb in WASM takes a while).
      const worker = yield* spawnCli(cwd, ["run"])
      yield* jsonLine(worker, "worker start", (line) => line.msg === "Worker started", 180_000)
      const banner = yield* jsonLine(worker, "banner", (line) => /embedded database/.test(String(line.msg)))
      expect(banner.level).toBe("WARN")
      expect(banner.msg).toMatch(/production sets DATABASE_URL/)
      expect(banner.limits).toMatch(/one worker process per data folder/)
      expect(banner.limits).toMatch(/polls every 0\.25 s/)
      expect(banner.limits).toMatch(/fsync off: survives a process crash, not a power loss/)
      expect(banner.encryption_key).toContain(join(dataDir, "encryption-key"))
      expect(existsSync(join(dataDir, "pglite", "PG_VERSION"))).toBe(true)
      const lock = JSON.parse(readFileSync(join(dataDir, "pglite.lock"), "utf8")) as Record<string, unknown>
      expect(lock).toMatchObject({ pid: worker.process.pid, role: "worker" })
      expect(lock.port).toEqual(expect.any(Number))

      // A second process enqueues through the running worker's port.
      const first = yield* runCli(cwd, ["enqueue", "--url", url, "--secret", secret, "--event-type", "smoke.first", "--payload", `{"n":1}`])
      expect(first.stderr).toBe("")
      expect(first.code).toBe(0)
      const firstId = first.stdout.trim()
      expect(yield* received(receiver, firstId)).toMatchObject({
        method: "POST",
        eventType: "smoke.first",
        verified: true,
        signature: "verified",
        status: 200
      })
      yield* delivered(worker, firstId)

      // The worker's client pool is exactly one connection (PGlite is one session; a larger pool
      // interleaves statements and loses writes): with it polling every 0.25 s and nothing else
      // connected, the server has room for all but one.
      expect(yield* freeConnections(Number(lock.port))).toBe(MAX_CONNECTIONS - 1)
      // And that is the pool's size, not its mood: worker and commands connect with these options.
      expect(clientOptions(Number(lock.port), "webhook-worker").maxConnections).toBe(1)

      // A second worker on the same folder: refused with one line, before logging anything.
      const second = yield* runCli(cwd, ["run"])
      expect(second.code).toBe(1)
      expect(second.stdout).toBe("")
      expect(second.stderr.trimEnd().split("\n")).toHaveLength(1)
      expect(second.stderr).toContain(`in use by another webhook-worker (pid ${worker.process.pid})`)
      expect(second.stderr).toContain(dataDir)

      yield* worker.signal("SIGTERM")
      expect(yield* worker.exited).toBe(0)
      expect(existsSync(join(dataDir, "pglite.lock"))).toBe(false)

      // No worker: commands open the folder themselves. The first delivery survived the restart.
      const stats = yield* runCli(cwd, ["stats", "--json"])
      expect(stats.code, stats.stderr).toBe(0)
      expect(JSON.parse(stats.stdout)).toContainEqual(expect.objectContaining({ status: "delivered", count: 1 }))
      const queued = yield* runCli(cwd, ["enqueue", "--url", url, "--secret", secret, "--event-type", "smoke.second", "--payload", `{"n":2}`])
      expect(queued.code, queued.stderr).toBe(0)
      const secondId = queued.stdout.trim()
      expect(existsSync(join(dataDir, "pglite.lock"))).toBe(false)

      // The restarted worker delivers what was queued while it was down (same generated key).
      const restarted = yield* spawnCli(cwd, ["run"])
      expect(yield* received(receiver, secondId)).toMatchObject({ eventType: "smoke.second", verified: true })
      yield* delivered(restarted, secondId)
      expect(jsonLines(restarted.lines).some((line) => line.msg === "Applied migrations")).toBe(false)

      // kill -9: what was committed before it (the delivery recorded by the worker, a row queued
      // through its port) is there afterwards. The stale lock is taken over by the next opener.
      yield* Effect.gen(function*() {
        while ((yield* statusCounts(cwd)).delivered !== 2) yield* Effect.sleep("100 millis")
      }).pipe(Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("second delivery not recorded") }))
      const later = yield* runCli(cwd, ["enqueue", "--url", url, "--secret", secret, "--event-type", "smoke.later", "--payload", "{}", "--delay", "3600"])
      expect(later.code, later.stderr).toBe(0)
      yield* restarted.signal("SIGKILL")
      yield* restarted.exited
      expect(restarted.process.signalCode).toBe("SIGKILL")
      expect(existsSync(join(dataDir, "pglite.lock"))).toBe(true)
      expect(yield* statusCounts(cwd)).toEqual({ delivered: 2, pending: 1 })
      expect(existsSync(join(dataDir, "pglite.lock"))).toBe(false)
    }).pipe(Effect.scoped), 400_000)
})
