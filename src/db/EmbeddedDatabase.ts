import type * as SqlClient from "@effect/sql/SqlClient"
import type * as PgClient from "@effect/sql-pg/PgClient"
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import { randomBytes } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { link, mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { Worker } from "node:worker_threads"
import { ConfigInvalid, decodeEncryptionKey } from "../config/AppConfig.js"
import { generateEncryptionKey } from "../crypto/Keyring.js"
import * as Database from "./Database.js"
import type { FromThread, ThreadOptions, ToThread } from "./EmbeddedThread.js"
import { ensureMigrated, type MigrateError } from "./Migrator.js"

/**
 * The embedded database: PGlite (PostgreSQL compiled to WASM) in a worker_thread, served on a
 * loopback port so @effect/sql-pg and every SQL path stay the same as with a real server. Used
 * when DATABASE_URL is unset: for a first run and for development, not for production.
 */

/** Where the embedded data lives (default `./.data`, relative to the current directory). */
export const DATA_DIR_VARIABLE = "WEBHOOK_WORKER_DATA_DIR"

/**
 * Connections the socket server accepts: the worker's one, plus CLI commands, reconnects and a
 * `psql` now and then. They share PGlite's one session, a protocol cycle at a time.
 */
export const MAX_CONNECTIONS = 8

export interface EmbeddedPaths {
  /** The data folder. */
  readonly root: string
  /** PGDATA. */
  readonly pgdata: string
  /** Who has the folder open: pid, role and, for a worker, its port. */
  readonly lock: string
  /** The generated WEBHOOK_SECRET_ENCRYPTION_KEY, when none is set. */
  readonly key: string
}

export const embeddedPaths = (env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): EmbeddedPaths => {
  const root = resolve(cwd, env[DATA_DIR_VARIABLE] || ".data")
  return { root, pgdata: join(root, "pglite"), lock: join(root, "pglite.lock"), key: join(root, "encryption-key") }
}

/** A connection string for the embedded server (no password: it listens on loopback only). */
export const connectionUrl = (port: number) => `postgres://postgres@127.0.0.1:${port}/postgres`

// == errors

export type LockRole = "worker" | "command"

/** The lock file's content. */
export interface LockInfo {
  readonly pid: number
  readonly role: LockRole
  /** The worker's port, once it serves the database; null while starting, and for commands. */
  readonly port: number | null
  readonly token: string
  readonly startedAt: string
}

/** Another process has the data folder open. Exit status 1, one line. */
export class EmbeddedDatabaseBusy extends Data.TaggedError("EmbeddedDatabaseBusy")<{
  readonly root: string
  readonly holder: LockInfo
  readonly waitedMs: number
}> {
  override get message() {
    const who = this.holder.role === "worker" ? "another webhook-worker" : "a webhook-worker command"
    const advice = this.holder.role === "worker"
      ? `stop it first, or give this one its own ${DATA_DIR_VARIABLE} (or a DATABASE_URL)`
      : `waited ${Math.round(this.waitedMs / 1000)} s; try again when it has finished`
    return `the embedded database in ${this.root} is in use by ${who} (pid ${this.holder.pid}): ${advice}`
  }
}

export class EmbeddedDatabaseFailed extends Data.TaggedError("EmbeddedDatabaseFailed")<{
  readonly root: string
  readonly reason: string
}> {
  override get message() {
    return `embedded database in ${this.root}: ${this.reason}`
  }
}

export type EmbeddedError = EmbeddedDatabaseBusy | EmbeddedDatabaseFailed

/** What building an embedded database layer can fail with. */
export type EmbeddedLayerError = EmbeddedError | MigrateError

const errorText = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

const codeOf = (cause: unknown) =>
  typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : undefined

const io = <A>(root: string, what: string, run: () => Promise<A>) =>
  Effect.tryPromise({
    try: run,
    catch: (cause) => new EmbeddedDatabaseFailed({ root, reason: `${what}: ${errorText(cause)}` })
  })

// == the lock file
//
// PGlite takes no lock on its folder, and two PostgreSQL instances on one PGDATA corrupt it.
// The file appears with its whole content at once (written aside, then hard-linked into place,
// which fails if the file exists), and a lock whose pid is gone is taken over.

/** Lock files this process holds: its own pid in a lock file is only stale if it is not one of these. */
const heldHere = new Set<string>()

const isAlive = (holder: LockInfo, lockPath: string) => {
  if (holder.pid === process.pid) return heldHere.has(lockPath)
  try {
    process.kill(holder.pid, 0)
    return true
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    return codeOf(error) === "EPERM"
  }
}

const parseLock = (text: string): LockInfo | null => {
  try {
    const value: unknown = JSON.parse(text)
    if (typeof value !== "object" || value === null) return null
    const info = value as Partial<LockInfo>
    return typeof info.pid === "number" && (info.role === "worker" || info.role === "command") && typeof info.token === "string"
      ? { pid: info.pid, role: info.role, port: typeof info.port === "number" ? info.port : null, token: info.token, startedAt: String(info.startedAt) }
      : null
  } catch {
    return null
  }
}

/** The lock's holder; null when there is no lock file; "corrupt" when it cannot be read as one. */
const readLock = async (path: string): Promise<LockInfo | null | "corrupt"> => {
  try {
    return parseLock(await readFile(path, "utf8")) ?? "corrupt"
  } catch (error) {
    if (codeOf(error) === "ENOENT") return null
    throw error
  }
}

const aside = (path: string, what: string) => `${path}.${what}.${process.pid}.${randomBytes(4).toString("hex")}`

const createLock = async (path: string, info: LockInfo): Promise<boolean> => {
  const temporary = aside(path, "new")
  await writeFile(temporary, JSON.stringify(info) + "\n")
  try {
    await link(temporary, path)
    return true
  } catch (error) {
    if (codeOf(error) === "EEXIST") return false
    throw error
  } finally {
    await unlink(temporary).catch(() => undefined)
  }
}

/** Moves a stale lock away; if a live one replaced it meanwhile, puts that one back. */
const removeStaleLock = async (path: string, stale: LockInfo | "corrupt") => {
  const moved = aside(path, "stale")
  try {
    await rename(path, moved)
  } catch (error) {
    if (codeOf(error) === "ENOENT") return
    throw error
  }
  const taken = await readLock(moved)
  if (taken !== null && taken !== "corrupt" && (stale === "corrupt" || taken.token !== stale.token)) {
    await link(moved, path).catch(() => undefined)
  }
  await unlink(moved).catch(() => undefined)
}

type LockAttempt = { readonly _tag: "Acquired"; readonly info: LockInfo } | { readonly _tag: "Held"; readonly holder: LockInfo }

const attemptLock = (paths: EmbeddedPaths, role: LockRole) =>
  io(paths.root, `cannot take ${paths.lock}`, async (): Promise<LockAttempt> => {
    await mkdir(paths.root, { recursive: true })
    const info: LockInfo = { pid: process.pid, role, port: null, token: randomBytes(8).toString("hex"), startedAt: new Date().toISOString() }
    for (let round = 0; round < 10; round++) {
      if (await createLock(paths.lock, info)) {
        heldHere.add(paths.lock)
        return { _tag: "Acquired", info }
      }
      const holder = await readLock(paths.lock)
      if (holder === null) continue
      if (holder !== "corrupt" && isAlive(holder, paths.lock)) return { _tag: "Held", holder }
      await removeStaleLock(paths.lock, holder)
    }
    throw new Error("the lock file keeps changing")
  })

export interface HeldLock {
  readonly info: LockInfo
  /** Records the port the worker serves the database on, for commands to find. */
  readonly recordPort: (port: number) => Effect.Effect<void, EmbeddedDatabaseFailed>
}

const releaseLock = (paths: EmbeddedPaths, info: LockInfo) =>
  Effect.promise(async () => {
    heldHere.delete(paths.lock)
    const current = await readLock(paths.lock).catch(() => null)
    if (current !== null && current !== "corrupt" && current.token === info.token) await unlink(paths.lock).catch(() => undefined)
  })

const held = (paths: EmbeddedPaths, info: LockInfo): Effect.Effect<HeldLock, never, Scope.Scope> =>
  Effect.as(Effect.addFinalizer(() => releaseLock(paths, info)), {
    info,
    recordPort: (port) =>
      io(paths.root, `cannot write ${paths.lock}`, async () => {
        const temporary = aside(paths.lock, "port")
        await writeFile(temporary, JSON.stringify({ ...info, port }) + "\n")
        await rename(temporary, paths.lock)
      })
  })

const POLL = Duration.millis(200)
/** How long a worker waits for a command that has the folder open (commands are short). */
const WORKER_WAITS_FOR_COMMAND = Duration.seconds(30)

/**
 * The data folder for a worker. Another worker on it is refused at once; a CLI command that has
 * it open is waited for.
 */
export const lockForWorker = (paths: EmbeddedPaths) =>
  Effect.gen(function*() {
    const started = yield* Clock.currentTimeMillis
    while (true) {
      const attempt = yield* attemptLock(paths, "worker")
      if (attempt._tag === "Acquired") return yield* held(paths, attempt.info)
      const waitedMs = (yield* Clock.currentTimeMillis) - started
      if (attempt.holder.role === "worker" || waitedMs > Duration.toMillis(WORKER_WAITS_FOR_COMMAND)) {
        return yield* new EmbeddedDatabaseBusy({ root: paths.root, holder: attempt.holder, waitedMs })
      }
      yield* Effect.sleep(POLL)
    }
  })

/**
 * Refuses at once when a live worker has the folder: called before a worker logs anything, so a
 * second worker's whole output is the one-line refusal. (Advisory: `lockForWorker` decides.)
 */
export const refuseIfWorkerRuns = (paths: EmbeddedPaths) =>
  Effect.flatMap(
    Effect.promise(() => readLock(paths.lock).catch(() => null)),
    (holder) =>
      holder !== null && holder !== "corrupt" && holder.role === "worker" && isAlive(holder, paths.lock)
        ? Effect.fail(new EmbeddedDatabaseBusy({ root: paths.root, holder, waitedMs: 0 }))
        : Effect.void
  )

// == the encryption key of embedded mode

/**
 * The key in the data folder, generated on first use. Secrets stored in this folder's database
 * are encrypted with it, so the two belong together (delete both, or neither).
 */
export const storedEncryptionKey = (paths: EmbeddedPaths) =>
  Effect.gen(function*() {
    const existing = yield* Effect.tryPromise({
      try: async () => {
        await mkdir(paths.root, { recursive: true })
        try {
          await writeFile(paths.key, generateEncryptionKey() + "\n", { flag: "wx", mode: 0o600 })
        } catch (error) {
          if (codeOf(error) !== "EEXIST") throw error
        }
        return (await readFile(paths.key, "utf8")).trim()
      },
      catch: (cause) =>
        new ConfigInvalid({
          variable: "WEBHOOK_SECRET_ENCRYPTION_KEY",
          reason: `is not set, and the embedded mode's key file ${paths.key} cannot be used: ${errorText(cause)}`
        })
    })
    const decoded = decodeEncryptionKey(existing)
    if (Either.isLeft(decoded)) {
      return yield* new ConfigInvalid({
        variable: "WEBHOOK_SECRET_ENCRYPTION_KEY",
        reason: `is not set, and ${paths.key} does not hold a key: ${decoded.left}`
      })
    }
    return Redacted.make(existing)
  })

/** The key file's key, if there is one (for the banner: is the running key the generated one?). */
export const readStoredKey = (paths: EmbeddedPaths): string | null => {
  try {
    return readFileSync(paths.key, "utf8").trim()
  } catch {
    return null
  }
}

// == the thread

/** tsx's ESM API (require.resolve would give its CommonJS build, which cannot load ESM here). */
const tsxEsmApi = (manifestPath: string): string => {
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as { exports?: Record<string, { import?: { default?: string } }> }
  const target = manifest.exports?.["./esm/api"]?.import?.default
  if (target === undefined) throw new Error(`${manifestPath} has no ./esm/api export`)
  return join(dirname(manifestPath), target)
}

/**
 * The thread's entry beside this file: `.js` in the build; `.ts` under tsx and vitest, where
 * Node 20 needs tsx to load it. A worker_thread does not take loader hooks from `--import` or
 * from its parent for its entry module, so a small eval'd bootstrap imports it through tsx's
 * `tsImport` (tsx is a dev dependency, and `.ts` only runs in development).
 */
const makeThread = (workerData: ThreadOptions): Worker => {
  const self = import.meta.url
  if (!/\.[cm]?ts$/.test(new URL(self).pathname)) return new Worker(new URL("./EmbeddedThread.js", self), { workerData })
  const entry = new URL("./EmbeddedThread.ts", self).href
  const tsx = pathToFileURL(tsxEsmApi(createRequire(self).resolve("tsx/package.json"))).href
  const bootstrap = `import(${JSON.stringify(tsx)}).then((tsx) => tsx.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(entry)}))`
  return new Worker(bootstrap, { eval: true, workerData })
}

export interface EmbeddedServer {
  readonly port: number
}

const STOP_TIMEOUT = Duration.seconds(20)

/**
 * Runs PGlite and its socket server in a worker_thread for the scope's lifetime. Stopping shuts
 * PostgreSQL down cleanly; `onCrash` hears of the thread dying on its own.
 */
export const startServer = (paths: EmbeddedPaths, onCrash: (reason: string) => void) => {
  let stopping = false
  return Effect.acquireRelease(
    Effect.async<{ readonly worker: Worker; readonly port: number }, EmbeddedDatabaseFailed>((resume) => {
      const worker = makeThread({
        marker: "webhook-worker/embedded-pglite",
        dataDir: paths.pgdata,
        host: "127.0.0.1",
        port: 0,
        maxConnections: MAX_CONNECTIONS
      })
      let started = false
      const fail = (reason: string) => {
        if (started) return
        started = true
        resume(Effect.fail(new EmbeddedDatabaseFailed({ root: paths.root, reason })))
      }
      worker.on("message", (message: FromThread) => {
        if (message.type === "listening" && !started) {
          started = true
          resume(Effect.succeed({ worker, port: message.port }))
        } else if (message.type === "failed") {
          fail(`PGlite did not start: ${message.message}`)
        }
      })
      worker.on("error", (error) => (started ? undefined : fail(`PGlite thread failed: ${error.message}`)))
      worker.on("exit", (code) => {
        if (!started) fail(`PGlite thread exited (code ${code}) before serving`)
        else if (!stopping) onCrash(`the PGlite thread exited (code ${code})`)
      })
      return Effect.promise(() => worker.terminate())
    }),
    ({ worker }) =>
      Effect.async<void>((resume) => {
        stopping = true
        worker.once("exit", () => resume(Effect.void))
        worker.postMessage({ type: "stop" } satisfies ToThread)
      }).pipe(
        // Finalizers run uninterruptibly; the wait must be interruptible for the timeout to work.
        Effect.interruptible,
        Effect.timeoutOption(STOP_TIMEOUT),
        // Not stopped in time: end it like a crash; PostgreSQL recovers from its WAL on the next start.
        Effect.flatMap((stopped) => (stopped._tag === "None" ? Effect.promise(() => worker.terminate()) : Effect.void)),
        Effect.asVoid
      )
  ).pipe(Effect.map(({ port }): EmbeddedServer => ({ port })))
}

/** The first start creates the database (initdb in WASM), which takes a while. */
export const isCreated = (paths: EmbeddedPaths) => existsSync(join(paths.pgdata, "PG_VERSION"))

// == layers

/**
 * How a process connects to the embedded server: a pool of exactly one connection. PGlite is one
 * session; with a larger pool concurrent statements interleave and writes are lost (see
 * MAX_CONNECTIONS and EmbeddedSocket.ts).
 */
export const clientOptions = (port: number, applicationName: string): Database.DatabaseOptions => ({
  url: Redacted.make(connectionUrl(port)),
  maxConnections: 1,
  applicationName
})

const clientLayer = (port: number, applicationName: string) => Database.layer(clientOptions(port, applicationName))

/**
 * The worker's database: takes the data folder (refusing a second worker), serves it on a
 * loopback port recorded in the lock file for commands to use, and connects with a pool of one.
 * If the PGlite thread dies the process shuts down (exit status 1): without its database a
 * worker can only fail.
 */
export const workerLayer = (paths: EmbeddedPaths): Layer.Layer<Database.PgPool | PgClient.PgClient | SqlClient.SqlClient, EmbeddedLayerError> =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const lock = yield* lockForWorker(paths)
    const runtime = yield* Effect.runtime<never>()
    if (!isCreated(paths)) {
      yield* Effect.logInfo("Creating the embedded database (first run; this takes about 15 seconds)").pipe(
        Effect.annotateLogs({ data_dir: paths.pgdata })
      )
    }
    const server = yield* startServer(paths, (reason) => {
      process.exitCode = 1
      Runtime.runFork(runtime)(Effect.logError("Embedded database stopped unexpectedly; shutting down").pipe(
        Effect.annotateLogs({ reason }),
        Effect.ensuring(Effect.sync(() => process.kill(process.pid, "SIGTERM")))
      ))
    })
    yield* lock.recordPort(server.port)
    yield* Effect.logInfo("Embedded database ready").pipe(
      Effect.annotateLogs({ data_dir: paths.pgdata, url: connectionUrl(server.port), pid: process.pid })
    )
    return clientLayer(server.port, "webhook-worker")
  }))

/** How long a command waits for a starting worker (its first start runs initdb) or another command. */
const COMMAND_WAIT = Duration.seconds(120)

/**
 * A command's database: through the running worker's port when a worker has the folder open;
 * otherwise the command opens the folder itself (taking the lock, so no worker starts on it
 * meanwhile). Either way pending migrations are applied first, so `enqueue` works before the
 * worker has ever run.
 */
export const commandLayer = (paths: EmbeddedPaths): Layer.Layer<Database.PgPool | PgClient.PgClient | SqlClient.SqlClient, EmbeddedLayerError> =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const started = yield* Clock.currentTimeMillis
    let port: number | null = null
    while (port === null) {
      const attempt = yield* attemptLock(paths, "command")
      const waitedMs = (yield* Clock.currentTimeMillis) - started
      if (attempt._tag === "Acquired") {
        yield* held(paths, attempt.info)
        if (!isCreated(paths)) {
          yield* Effect.sync(() => process.stderr.write(`webhook-worker: creating the embedded database in ${paths.pgdata} (first run; about 15 s)\n`))
        }
        port = (yield* startServer(paths, () => undefined)).port
      } else if (attempt.holder.role === "worker" && attempt.holder.port !== null) {
        port = attempt.holder.port
      } else if (waitedMs > Duration.toMillis(COMMAND_WAIT)) {
        return yield* new EmbeddedDatabaseBusy({ root: paths.root, holder: attempt.holder, waitedMs })
      } else {
        yield* Effect.sleep(POLL)
      }
    }
    return Layer.effectDiscard(ensureMigrated).pipe(Layer.provideMerge(clientLayer(port, "webhook-worker cli")))
  }))
