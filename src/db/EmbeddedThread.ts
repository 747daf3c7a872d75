/**
 * The worker_thread that hosts PGlite and its socket server. PGlite runs PostgreSQL as WASM on
 * the thread that calls it, so on the main thread every query would freeze deliveries, timers
 * and signal handling; here it runs beside them. Started by EmbeddedDatabase.ts.
 */
import { PGlite } from "@electric-sql/pglite"
import { existsSync } from "node:fs"
import { mkdir, rename, rm } from "node:fs/promises"
import { isMainThread, type MessagePort, parentPort, workerData } from "node:worker_threads"
import { serve, type Served } from "./EmbeddedSocket.js"

/** What the parent passes as workerData. */
export interface ThreadOptions {
  readonly marker: typeof THREAD_MARKER
  /** The PGDATA folder on disk. */
  readonly dataDir: string
  readonly host: string
  readonly port: number
  readonly maxConnections: number
}

export type FromThread =
  | { readonly type: "listening"; readonly port: number }
  | { readonly type: "failed"; readonly message: string }
  | { readonly type: "stopped" }

export type ToThread = { readonly type: "stop" }

export const THREAD_MARKER = "webhook-worker/embedded-pglite"

const isThreadOptions = (data: unknown): data is ThreadOptions =>
  typeof data === "object" && data !== null && (data as { marker?: unknown }).marker === THREAD_MARKER

/**
 * Opens the data folder. A new one is created beside it and renamed into place once initdb has
 * finished, so a first run interrupted half-way (initdb takes ~15 s in WASM) leaves no
 * half-made database behind for the next start to trip over.
 */
const open = async (dataDir: string): Promise<PGlite> => {
  if (!existsSync(`${dataDir}/PG_VERSION`)) {
    const fresh = `${dataDir}.creating`
    await rm(fresh, { recursive: true, force: true })
    await mkdir(fresh, { recursive: true })
    const created = await PGlite.create({ dataDir: fresh })
    await created.close()
    await rm(dataDir, { recursive: true, force: true })
    await rename(fresh, dataDir)
  }
  return PGlite.create({ dataDir })
}

const run = async (options: ThreadOptions, port: MessagePort) => {
  const post = (message: FromThread) => port.postMessage(message)
  let db: PGlite | undefined
  let served: Served | undefined
  let ready = false
  let stopRequested = false
  const finish = async () => {
    // Connections first (rolling back what they left open), then PostgreSQL's own shutdown,
    // which writes everything out, so the next start needs no crash recovery.
    await served?.close().catch(() => undefined)
    await db?.close().catch(() => undefined)
    post({ type: "stopped" })
    port.close()
  }
  port.on("message", (message: ToThread) => {
    if (message.type !== "stop" || stopRequested) return
    stopRequested = true
    // Still opening: `run` finishes once the database is open.
    if (ready) void finish()
  })
  try {
    db = await open(options.dataDir)
    if (!stopRequested) {
      served = await serve(db, { host: options.host, port: options.port, maxConnections: options.maxConnections })
    }
  } catch (error) {
    post({ type: "failed", message: error instanceof Error ? error.message : String(error) })
    await db?.close().catch(() => undefined)
    port.close()
    return
  }
  ready = true
  if (stopRequested || served === undefined) return finish()
  post({ type: "listening", port: served.port })
}

if (!isMainThread && parentPort !== null && isThreadOptions(workerData)) void run(workerData, parentPort)
