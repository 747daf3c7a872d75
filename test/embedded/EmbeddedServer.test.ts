import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect, Exit, Fiber, Scope } from "effect"
import { spawn } from "node:child_process"
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { mkdir } from "node:fs/promises"
import { connect as connectTcp, type Socket } from "node:net"
import { join } from "node:path"
import Pg from "pg"
import { afterAll, beforeAll, describe, expect } from "vitest"
import { commandLayer, connectionUrl, embeddedPaths, MAX_CONNECTIONS, startServer } from "../../src/db/EmbeddedDatabase.js"
import { tempDir } from "./support.js"

/**
 * The embedded server in-process (its worker_thread runs the `.ts` entry through tsx here), with
 * plain `pg` clients: the session scheduler's guarantees, which PGlite's one session needs.
 */

let port = 0
let crashed: string | null = null
let scope: Scope.CloseableScope

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(
    Effect.gen(function*() {
      const dir = yield* tempDir("ww-embedded-server-")
      return yield* startServer(embeddedPaths({ WEBHOOK_WORKER_DATA_DIR: join(dir, "data") }), (reason) => (crashed = reason))
    }).pipe(Scope.extend(scope))
  )
  port = server.port
}, 180_000)

afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)), 60_000)

const connect = async () => {
  const client = new Pg.Client({ connectionString: connectionUrl(port) })
  client.on("error", () => undefined)
  await client.connect()
  return client
}

const withClients = <A>(count: number, run: (clients: Array<Pg.Client>) => Promise<A>) =>
  Effect.promise(async () => {
    const clients = await Promise.all(Array.from({ length: count }, connect))
    try {
      return await run(clients)
    } finally {
      await Promise.all(clients.map((client) => client.end().catch(() => undefined)))
    }
  })

describe("embedded server: one PGlite session shared by several connections", () => {
  it.live("two connections writing at once, one with 2 MB statements (many TCP reads each): every row lands intact", () =>
    withClients(2, async ([a, b]) => {
      await a!.query("CREATE TABLE big (id serial PRIMARY KEY, body text, n int)")
      await a!.query("CREATE TABLE small (id serial PRIMARY KEY, x int)")
      // A 2 MB Bind message spans many reads. With pglite-socket's own server this fails now and
      // then ("bind message supplies 2 parameters, but prepared statement "" requires 1"); the
      // next test provokes that case deterministically.
      const body = "x".repeat(2_000_000)
      let done = false
      const bigInserts = (async () => {
        for (let n = 0; n < 8; n++) await a!.query("INSERT INTO big (body, n) VALUES ($1, $2)", [body, n])
        done = true
      })()
      const smallInserts = (async () => {
        const wrong: Array<unknown> = []
        let x = 0
        while (!done) {
          x++
          const result = await b!.query<{ x: number }>("INSERT INTO small (x) VALUES ($1) RETURNING x", [x])
          if (result.rows[0]?.x !== x) wrong.push(result.rows)
        }
        return { count: x, wrong }
      })()
      const [, small] = await Promise.all([bigInserts, smallInserts])
      expect(small.wrong).toEqual([])
      expect(small.count).toBeGreaterThan(0)
      const counts = await a!.query<{ big: string; small: string }>("SELECT (SELECT count(*) FROM big) AS big, (SELECT count(*) FROM small) AS small")
      expect(counts.rows[0]).toEqual({ big: "8", small: String(small.count) })
    }), 120_000)

  it.live("a connection mid-cycle keeps the session: another's statement waits instead of replacing the unnamed statement", () =>
    withClients(1, async ([b]) => {
      await b!.query("CREATE TABLE cycle_a (body text, n int)")
      await b!.query("CREATE TABLE cycle_b (x int)")
      const raw = await rawSession()
      const bind = frame("B", cstring(""), cstring(""), int16(0), int16(2), int32(5), Buffer.from("hello"), int32(1), Buffer.from("7"), int16(0))
      // Parse and the first bytes of Bind: the rest "arrives" later, as with a large message.
      raw.send(Buffer.concat([frame("P", cstring(""), cstring("INSERT INTO cycle_a (body, n) VALUES ($1, $2)"), int16(0)), bind.subarray(0, 10)]))
      await raw.waitFor(0x31) // ParseComplete
      let bDone = false
      const other = b!.query<{ x: number }>("INSERT INTO cycle_b (x) VALUES ($1) RETURNING x", [42]).then((result) => {
        bDone = true
        return result.rows
      })
      await new Promise((resolve) => setTimeout(resolve, 300))
      expect(bDone).toBe(false)
      raw.send(Buffer.concat([bind.subarray(10), frame("E", cstring(""), int32(0)), frame("S")]))
      await raw.waitFor(0x5a)
      expect(raw.types()).not.toContain(0x45) // no ErrorResponse
      expect(await other).toEqual([{ x: 42 }])
      const rows = await b!.query("SELECT (SELECT count(*) FROM cycle_a WHERE body = 'hello' AND n = 7) AS a, (SELECT count(*) FROM cycle_b) AS b")
      expect(rows.rows).toEqual([{ a: "1", b: "1" }])
      raw.socket.destroy()
    }), 60_000)

  it.live("an open transaction has the session: other connections wait for its COMMIT", () =>
    withClients(2, async ([a, b]) => {
      await a!.query("CREATE TABLE tx_turn (n int)")
      await a!.query("BEGIN")
      await a!.query("INSERT INTO tx_turn VALUES (1)")
      const order: Array<string> = []
      const reading = b!.query<{ n: string }>("SELECT count(*) AS n FROM tx_turn").then((result) => {
        order.push("b read")
        return result.rows[0]!.n
      })
      await new Promise((resolve) => setTimeout(resolve, 300))
      order.push("a commits")
      await a!.query("COMMIT")
      // Had b's SELECT run inside a's transaction, it would have come first.
      expect(await reading).toBe("1")
      expect(order).toEqual(["a commits", "b read"])
    }), 60_000)

  it.live("a connection that goes away mid-transaction is rolled back and frees the session", () =>
    withClients(1, async ([b]) => {
      await b!.query("CREATE TABLE abandoned (n int)")
      const a = await connect()
      await a.query("BEGIN")
      await a.query("INSERT INTO abandoned VALUES (1)")
      ;(a as unknown as { connection: { stream: Socket } }).connection.stream.destroy()
      const result = await b!.query<{ n: string }>("SELECT count(*) AS n FROM abandoned")
      expect(result.rows[0]!.n).toBe("0")
    }), 60_000)

  it.live("a connection that goes away mid-cycle (Execute sent, no Sync) is rolled back, as PostgreSQL would", () =>
    withClients(1, async ([b]) => {
      await b!.query("CREATE TABLE half_done (n int)")
      const raw = await rawSession()
      // Parse, Bind, Execute of an INSERT, and no Sync: its implicit transaction is still open.
      raw.send(frame("P", cstring(""), cstring("INSERT INTO half_done VALUES (1)"), int16(0)))
      raw.send(frame("B", cstring(""), cstring(""), int16(0), int16(0), int16(0)))
      raw.send(frame("E", cstring(""), int32(0)))
      await raw.waitFor(0x43) // CommandComplete: the INSERT ran
      raw.socket.destroy()
      const result = await b!.query<{ n: string }>("SELECT count(*) AS n FROM half_done")
      expect(result.rows[0]!.n).toBe("0")
      expect((await b!.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }])
    }), 60_000)

  it.live("a client's Terminate does not end the session for the others", () =>
    withClients(1, async ([b]) => {
      const a = await connect()
      await a.query("SELECT 1")
      await a.end()
      expect((await b!.query("SELECT 2 AS two")).rows).toEqual([{ two: 2 }])
    }), 60_000)

  it.live("clients get no cancel key (an interrupted query must not wait for a second pooled connection)", () =>
    withClients(1, async ([a]) => {
      expect((a as unknown as { processID: number | null }).processID ?? null).toBeNull()
      expect((await a!.query("SELECT 3 AS three")).rows).toEqual([{ three: 3 }])
    }), 60_000)

  it.live("a command finds a starting worker through the lock file, waits for its port, and migrates through it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir("ww-embedded-route-")
      const paths = embeddedPaths({ WEBHOOK_WORKER_DATA_DIR: join(dir, "data") })
      // A "worker" that has taken the folder but does not serve yet (as during its initdb).
      const worker = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" })
      yield* Effect.addFinalizer(() => Effect.sync(() => worker.kill()))
      const lock = { pid: worker.pid, role: "worker", port: null, token: "0123456789abcdef", startedAt: new Date().toISOString() }
      yield* Effect.promise(() => mkdir(paths.root, { recursive: true }))
      writeFileSync(paths.lock, JSON.stringify(lock))
      const command = yield* Effect.fork(
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ present: boolean }>`SELECT to_regclass('webhook_delivery_queue') IS NOT NULL AS present`).pipe(
          Effect.provide(commandLayer(paths))
        )
      )
      yield* Effect.sleep("700 millis")
      expect(command.unsafePoll()).toBeNull()
      writeFileSync(paths.lock, JSON.stringify({ ...lock, port }))
      expect(yield* Fiber.join(command)).toEqual([{ present: true }])
      // It used the worker's database and left the worker's lock alone.
      expect(JSON.parse(readFileSync(paths.lock, "utf8"))).toMatchObject({ pid: worker.pid, port })
      expect(existsSync(paths.pgdata)).toBe(false)
    }).pipe(Effect.scoped), 60_000)

  it.live(`connection ${MAX_CONNECTIONS + 1} is refused with PostgreSQL's own error`, () =>
    withClients(MAX_CONNECTIONS, async () => {
      const extra = new Pg.Client({ connectionString: connectionUrl(port) })
      extra.on("error", () => undefined)
      await expect(extra.connect()).rejects.toThrow(/too many clients/)
      expect(crashed).toBeNull()
    }), 60_000)
})

// == a raw protocol client, for what `pg` never sends on its own

const cstring = (text: string) => Buffer.from(text + "\0", "utf8")
const int16 = (value: number) => {
  const buffer = Buffer.alloc(2)
  buffer.writeInt16BE(value)
  return buffer
}
const int32 = (value: number) => {
  const buffer = Buffer.alloc(4)
  buffer.writeInt32BE(value)
  return buffer
}
const frame = (type: string, ...parts: Array<Buffer>) => {
  const body = Buffer.concat(parts)
  return Buffer.concat([Buffer.from(type), int32(body.length + 4), body])
}

const rawSession = () =>
  new Promise<{
    socket: Socket
    send: (data: Buffer) => void
    waitFor: (type: number) => Promise<void>
    types: () => Array<number>
  }>((resolve, reject) => {
    const socket = connectTcp(port, "127.0.0.1")
    let received = Buffer.alloc(0)
    const types = () => {
      const found: Array<number> = []
      for (let offset = 0; offset + 5 <= received.length; offset += 1 + received.readInt32BE(offset + 1)) found.push(received[offset]!)
      return found
    }
    const waitFor = (type: number) =>
      new Promise<void>((done, fail) => {
        const deadline = Date.now() + 10_000
        const check = () => {
          if (types().includes(type)) return done()
          if (Date.now() > deadline) return fail(new Error(`no message ${String.fromCharCode(type)}`))
          setTimeout(check, 10)
        }
        check()
      })
    socket.on("data", (chunk: Buffer) => (received = Buffer.concat([received, chunk])))
    socket.on("error", reject)
    socket.on("connect", () => {
      const params = Buffer.concat([cstring("user"), cstring("postgres"), cstring("database"), cstring("postgres"), cstring("")])
      socket.write(Buffer.concat([int32(params.length + 8), int32(196608), params]))
      waitFor(0x5a).then(() => {
        received = Buffer.alloc(0)
        resolve({ socket, send: (data) => void socket.write(data), waitFor, types })
      }, reject)
    })
  })
