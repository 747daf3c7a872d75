import { it } from "@effect/vitest"
import { Effect, Exit, Option, Redacted, Scope } from "effect"
import { spawn } from "node:child_process"
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { mkdir } from "node:fs/promises"
import { join } from "node:path"
import { afterEach, describe, expect } from "vitest"
import { defaults, decodeEncryptionKey } from "../../src/config/AppConfig.js"
import { EMBEDDED_POLL_INTERVAL_MS, embeddedDefaults } from "../../src/db/Connect.js"
import {
  DATA_DIR_VARIABLE,
  embeddedPaths,
  type EmbeddedPaths,
  lockForWorker,
  refuseIfWorkerRuns
} from "../../src/db/EmbeddedDatabase.js"
import { tempDir } from "./support.js"

const folder = Effect.map(tempDir("ww-embedded-lock-"), (dir) => embeddedPaths({ [DATA_DIR_VARIABLE]: join(dir, "data") }))

const writeLock = (paths: EmbeddedPaths, content: object | string) =>
  Effect.promise(async () => {
    await mkdir(paths.root, { recursive: true })
    writeFileSync(paths.lock, typeof content === "string" ? content : JSON.stringify(content))
  })

const readLockFile = (paths: EmbeddedPaths) => JSON.parse(readFileSync(paths.lock, "utf8")) as Record<string, unknown>

/** A process that lives for `ms` (its pid is real, then gone). */
const childFor = (ms: number) =>
  Effect.sync(() => {
    const child = spawn(process.execPath, ["-e", `setTimeout(() => {}, ${ms})`], { stdio: "ignore" })
    return { pid: child.pid!, exited: Effect.promise(() => new Promise<void>((done) => child.on("exit", () => done()))) }
  })

const holder = (pid: number, role: "worker" | "command", port: number | null = null) => ({
  pid,
  role,
  port,
  token: "feedface",
  startedAt: new Date().toISOString()
})

describe("embedded data folder lock", () => {
  it.live("a worker takes a free folder, records its port, and releases the lock when its scope closes", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      const scope = yield* Scope.make()
      const lock = yield* lockForWorker(paths).pipe(Scope.extend(scope))
      expect(readLockFile(paths)).toMatchObject({ pid: process.pid, role: "worker", port: null })
      yield* lock.recordPort(54321)
      expect(readLockFile(paths)).toMatchObject({ pid: process.pid, role: "worker", port: 54321, token: lock.info.token })
      yield* Scope.close(scope, Exit.void)
      expect(existsSync(paths.lock)).toBe(false)
    }).pipe(Effect.scoped))

  it.live("a live worker's lock refuses another worker at once, naming its pid and the folder", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      const alive = yield* childFor(30_000)
      yield* writeLock(paths, holder(alive.pid, "worker", 5555))
      const started = Date.now()
      const refused = yield* Effect.flip(lockForWorker(paths))
      expect(Date.now() - started).toBeLessThan(2000)
      expect(refused._tag).toBe("EmbeddedDatabaseBusy")
      expect(refused.message).toBe(
        `the embedded database in ${paths.root} is in use by another webhook-worker (pid ${alive.pid}): stop it first, or give this one its own WEBHOOK_WORKER_DATA_DIR (or a DATABASE_URL)`
      )
      expect((yield* Effect.flip(refuseIfWorkerRuns(paths)))._tag).toBe("EmbeddedDatabaseBusy")
      // The refused worker left the holder's lock alone.
      expect(readLockFile(paths)).toMatchObject({ pid: alive.pid, port: 5555 })
      process.kill(alive.pid)
    }).pipe(Effect.scoped))

  it.live("a lock whose process is gone (a crashed worker) is taken over", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      const gone = yield* childFor(0)
      yield* gone.exited
      yield* writeLock(paths, holder(gone.pid, "worker", 5555))
      yield* refuseIfWorkerRuns(paths)
      const lock = yield* lockForWorker(paths)
      expect(lock.info.pid).toBe(process.pid)
      expect(readLockFile(paths)).toMatchObject({ pid: process.pid, token: lock.info.token })
    }).pipe(Effect.scoped))

  it.live("a corrupt lock file is replaced", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      yield* writeLock(paths, "not json")
      const lock = yield* lockForWorker(paths)
      expect(readLockFile(paths)).toMatchObject({ pid: process.pid, token: lock.info.token })
    }).pipe(Effect.scoped))

  it.live("a worker waits while a CLI command has the folder open, then takes it", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      const command = yield* childFor(1500)
      yield* writeLock(paths, holder(command.pid, "command"))
      const started = Date.now()
      const lock = yield* lockForWorker(paths)
      expect(Date.now() - started).toBeGreaterThanOrEqual(1000)
      expect(lock.info.pid).toBe(process.pid)
    }).pipe(Effect.scoped))
})

describe("embedded-mode settings", () => {
  const saved = process.env[DATA_DIR_VARIABLE]
  afterEach(() => {
    if (saved === undefined) delete process.env[DATA_DIR_VARIABLE]
    else process.env[DATA_DIR_VARIABLE] = saved
  })

  it.live("with DATABASE_URL nothing changes: the encryption key stays required", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      process.env[DATA_DIR_VARIABLE] = paths.root
      const settings = { ...defaults, databaseUrl: Option.some(Redacted.make("postgres://x@127.0.0.1/db")) }
      expect(yield* embeddedDefaults(settings, [])).toBe(settings)
      expect(existsSync(paths.key)).toBe(false)
    }).pipe(Effect.scoped))

  it.live("without DATABASE_URL: a key generated into the data folder (kept), polling at 0.25 s, loopback allowed", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      process.env[DATA_DIR_VARIABLE] = paths.root
      const first = yield* embeddedDefaults(defaults, [])
      const key = Redacted.value(Option.getOrThrow(first.encryptionKey))
      expect(decodeEncryptionKey(key)._tag).toBe("Right")
      expect(readFileSync(paths.key, "utf8").trim()).toBe(key)
      expect(statSync(paths.key).mode & 0o777).toBe(0o600)
      expect(first.pollIntervalMs).toBe(EMBEDDED_POLL_INTERVAL_MS)
      expect(first.allowPrivateNetworks).toBe(true)
      const again = yield* embeddedDefaults(defaults, [])
      expect(Redacted.value(Option.getOrThrow(again.encryptionKey))).toBe(key)
    }).pipe(Effect.scoped))

  it.live("variables set explicitly win over embedded defaults", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      const own = Redacted.make("q8vTx0H1m7B4cN9yL2kZp5rW3sD6fG8hJ0aE1uI4oY8=")
      const env = { [DATA_DIR_VARIABLE]: paths.root, WORKER_POLL_INTERVAL: "5", WEBHOOK_ALLOW_PRIVATE_NETWORKS: "false" }
      const settings = yield* embeddedDefaults({ ...defaults, pollIntervalMs: 5000, encryptionKey: Option.some(own) }, [], env)
      expect(settings.pollIntervalMs).toBe(5000)
      expect(settings.allowPrivateNetworks).toBe(false)
      expect(settings.encryptionKey).toEqual(Option.some(own))
      expect(existsSync(paths.key)).toBe(false)
    }).pipe(Effect.scoped))

  it.live("refused without DATABASE_URL when an env file is given or NODE_ENV=production, before writing anything", () =>
    Effect.gen(function*() {
      const paths = yield* folder
      const envFile = join(paths.root, "..", "worker.env")
      const cases: ReadonlyArray<[ReadonlyArray<string>, Record<string, string>, string]> = [
        [[envFile], {}, "(an --env-file was given)"],
        [[], { NODE_ENV: "production" }, "(NODE_ENV=production)"],
        [[envFile], { NODE_ENV: "Production" }, "(an --env-file was given, NODE_ENV=production)"]
      ]
      for (const [files, extra, why] of cases) {
        const error = yield* Effect.flip(embeddedDefaults(defaults, files, { [DATA_DIR_VARIABLE]: paths.root, ...extra }))
        expect(error._tag).toBe("ConfigInvalid")
        expect(error.message).toBe(`DATABASE_URL: is required ${why}; the embedded database is for development only`)
      }
      expect(existsSync(paths.root)).toBe(false)
      // Development (no env file, NODE_ENV anything else) still gets the embedded database.
      const development = yield* embeddedDefaults(defaults, [], { [DATA_DIR_VARIABLE]: paths.root, NODE_ENV: "development" })
      expect(development.pollIntervalMs).toBe(EMBEDDED_POLL_INTERVAL_MS)
    }).pipe(Effect.scoped))
})
