/**
 * The systems under test, behind one interface: our worker (the built CLI, `webhook-worker run`,
 * fed through the library's `toRow` + `insertRows`), graphile-worker (defaults, and with its
 * batching options) and pg-boss 12 (LISTEN/NOTIFY, batch fetch, burst).
 */
import { SqlClient } from "@effect/sql"
import { Effect, Either, ManagedRuntime, Redacted } from "effect"
import { Logger, makeWorkerUtils, runMigrations, type WorkerUtils } from "graphile-worker"
import { randomBytes } from "node:crypto"
import { existsSync, readFileSync } from "node:fs"
import { createServer } from "node:net"
import { join } from "node:path"
import Pg from "pg"
import { PgBoss } from "pg-boss"
import { Keyring } from "../../src/crypto/Keyring.js"
import * as Database from "../../src/db/Database.js"
import { migrate, readMigrations } from "../../src/db/Migrator.js"
import { type Destination, insertRows, toRow } from "../../src/queue/Enqueue.js"
import { builtChild, type Child, projectRoot, spawnNode } from "./children.js"
import { envelope, EVENT_TYPE, eventData, GRAPHILE_TASK, type PeerEvent, PGBOSS_QUEUE, SECRET } from "./common.js"
import { urlFor } from "./db.js"

export const SYSTEMS = ["ours", "ours-defaults", "graphile", "graphile-batch", "pgboss"] as const
export type SystemName = (typeof SYSTEMS)[number]

export const LABELS: Record<SystemName, string> = {
  ours: "webhook-worker (ours), WORKER_BATCH_SIZE = concurrency",
  "ours-defaults": "webhook-worker (ours), product defaults (WORKER_BATCH_SIZE 10)",
  graphile: "graphile-worker 0.17.3 defaults",
  "graphile-batch": "graphile-worker 0.17.3 + localQueue 500 + batched completion",
  pgboss: "pg-boss 12.38.0 notify + batch 10 + burst"
}

export interface WorkerOptions {
  readonly database: string
  readonly targetUrl: string
  readonly concurrency: number
  readonly logFile: string
  readonly probeFile: string
  /** Our worker only: extra environment (WORKER_BATCH_SIZE, ...). */
  readonly env: Record<string, string>
  /** Our worker only: write a V8 CPU profile into this directory. */
  readonly cpuProfileDir: string | undefined
  /** More node flags for our worker (`--worker-node-flags`); peers ignore them. */
  readonly nodeFlags: ReadonlyArray<string>
}

/** A queue with its schema set up in one database. */
export interface Queue {
  /** Enqueues rows seq = from..from+count-1 in batches (the backlog for a burn-down). */
  readonly enqueueBulk: (from: number, count: number) => Promise<void>
  /** Enqueues one row (latency phase); resolves when the library call returns (commit). */
  readonly enqueueOne: (seq: number) => Promise<void>
  /** Rows not yet done (any non-final state), checked with an index-friendly query. */
  readonly busy: (client: Pg.Client) => Promise<boolean>
  /** Final state, for the record: delivered / not delivered, and log rows where there are any. */
  readonly summary: (client: Pg.Client) => Promise<Record<string, number>>
  readonly close: () => Promise<void>
}

export interface System {
  readonly name: SystemName
  /** Creates the schema; `producerPool` connections serve the enqueue calls. */
  readonly open: (database: string, producerPool: number) => Promise<Queue>
  readonly startWorker: (options: WorkerOptions) => Promise<Child>
  /** Resolves when a started worker is ready to claim (false on timeout). */
  readonly waitReady: (child: Child, timeoutMs: number) => Promise<boolean>
}

// == ours

/** The encryption key of every run (secrets are stored encrypted, as in production). */
export const ENCRYPTION_KEY = randomBytes(32).toString("base64")
const keyring = new Keyring(Buffer.from(ENCRYPTION_KEY, "base64"), [])

const BULK_BATCH = 1_000

/** Where our rows are sent: `url` = per-row URL + secret (encrypted per row), `endpoint` = one registered endpoint. */
export type DestinationMode = "url" | "endpoint"

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

const probeArgs = () => ["--import", builtChild("probe")]

/** The Node flags our launcher's shebang sets (`#!/usr/bin/env -S node FLAGS --`): ours runs as installed. */
const launcherFlags = (): ReadonlyArray<string> => {
  const shebang = readFileSync(join(projectRoot, "bin", "webhook-worker.js"), "utf8").split("\n", 1)[0] ?? ""
  const match = /^#!\/usr\/bin\/env -S node (.*?)\s*--$/.exec(shebang)
  return match?.[1] === undefined || match[1] === "" ? [] : match[1].split(/\s+/)
}

export const ours = (targetUrl: string, mode: DestinationMode, name: "ours" | "ours-defaults" = "ours"): System => ({
  name,
  open: async (database, producerPool) => {
    const runtime = ManagedRuntime.make(Database.layer({
      url: Redacted.make(urlFor(database)),
      maxConnections: producerPool,
      applicationName: "webhook-worker bench producer"
    }))
    await runtime.runPromise(Effect.flatMap(readMigrations(), migrate))
    let destination: Destination = { url: targetUrl, secret: SECRET }
    if (mode === "endpoint") {
      const id = await runtime.runPromise(Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const rows = yield* sql.unsafe<{ id: string }>(
          "INSERT INTO partner_webhooks (url, secret) VALUES ($1, $2) RETURNING id::text AS id",
          [targetUrl, keyring.encrypt(SECRET)]
        )
        return rows[0]?.id ?? ""
      }))
      destination = { endpointId: id }
    }
    const row = (seq: number) => {
      const result = toRow({ destination, eventType: EVENT_TYPE, payload: eventData(seq) }, keyring, 5)
      if (Either.isLeft(result)) throw new Error(result.left.message)
      return result.right
    }
    return {
      enqueueBulk: async (from, count) => {
        for (let start = from; start < from + count; start += BULK_BATCH) {
          const rows = Array.from({ length: Math.min(BULK_BATCH, from + count - start) }, (_, i) => row(start + i))
          await runtime.runPromise(insertRows(rows))
        }
      },
      enqueueOne: async (seq) => {
        await runtime.runPromise(insertRows([row(seq)]))
      },
      busy: async (client) => {
        const result = await client.query<{ busy: boolean }>(
          "SELECT EXISTS (SELECT 1 FROM webhook_delivery_queue WHERE status IN ('pending', 'failed', 'processing')) AS busy"
        )
        return result.rows[0]?.busy ?? true
      },
      summary: async (client) => {
        const rows = await client.query<{ status: string; n: number }>(
          `SELECT status, count(*)::int AS n FROM webhook_delivery_queue GROUP BY status
           UNION ALL SELECT 'log_rows', count(*)::int FROM webhook_delivery_log`
        )
        return Object.fromEntries(rows.rows.map((r) => [r.status, r.n]))
      },
      close: () => runtime.dispose()
    }
  },
  startWorker: async (options) => {
    const port = await freePort()
    const cli = join(projectRoot, "bin", "webhook-worker.js")
    return spawnNode(cli, ["run"], {
      logFile: options.logFile,
      ipc: false,
      nodeArgs: [
        ...launcherFlags(),
        ...probeArgs(),
        ...options.nodeFlags,
        ...(options.cpuProfileDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", options.cpuProfileDir])
      ],
      env: {
        DATABASE_URL: urlFor(options.database),
        WEBHOOK_SECRET_ENCRYPTION_KEY: ENCRYPTION_KEY,
        WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
        MAX_CONCURRENT_DELIVERIES: String(options.concurrency),
        METRICS_ENABLED: "true",
        METRICS_PORT: String(port),
        BENCH_PROBE_FILE: options.probeFile,
        ...options.env
      }
    })
  },
  waitReady: async (child, timeoutMs) => {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline && child.running) {
      if (existsSync(child.logFile) && readFileSync(child.logFile, "utf8").includes("Worker started")) return true
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    return false
  }
})

// == peers

const readiness = new WeakMap<Child, Promise<boolean>>()

const startPeer = (peer: SystemName) => async (options: WorkerOptions): Promise<Child> => {
  const child = spawnNode(builtChild("peer"), [], {
    logFile: options.logFile,
    ipc: true,
    nodeArgs: probeArgs(),
    env: {
      PEER: peer,
      DATABASE_URL: urlFor(options.database),
      TARGET_URL: options.targetUrl,
      CONCURRENCY: String(options.concurrency),
      BENCH_PROBE_FILE: options.probeFile
    }
  })
  const ready = new Promise<boolean>((resolve) => {
    child.process.on("message", (message: PeerEvent) => {
      if (message.event === "ready") resolve(true)
    })
    void child.exited.then(() => resolve(false))
  })
  readiness.set(child, ready)
  return child
}

const waitPeerReady = async (child: Child, timeoutMs: number): Promise<boolean> => {
  const ready = readiness.get(child) ?? Promise.resolve(false)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs)
  })
  const result = await Promise.race([ready, timeout])
  clearTimeout(timer)
  return result
}

const graphile = (name: "graphile" | "graphile-batch"): System => ({
  name,
  open: async (database, producerPool) => {
    // Our own pool, so that its errors (a connection ended by DROP DATABASE) are handled.
    const pgPool = new Pg.Pool({ connectionString: urlFor(database), max: producerPool })
    pgPool.on("error", () => undefined)
    pgPool.on("connect", (client) => client.on("error", () => undefined))
    await runMigrations({ pgPool, logger: quietGraphileLogger })
    const utils: WorkerUtils = await makeWorkerUtils({ pgPool, logger: quietGraphileLogger })
    return {
      enqueueBulk: async (from, count) => {
        for (let start = from; start < from + count; start += BULK_BATCH) {
          const specs = Array.from({ length: Math.min(BULK_BATCH, from + count - start) }, (_, i) => ({
            identifier: GRAPHILE_TASK,
            payload: envelope(start + i)
          }))
          await utils.addJobs(specs)
        }
      },
      enqueueOne: async (seq) => {
        await utils.addJob(GRAPHILE_TASK, envelope(seq))
      },
      // Completed jobs are deleted; failed ones stay (with attempts) and would show here.
      busy: async (client) => {
        const result = await client.query<{ busy: boolean }>("SELECT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS busy")
        return result.rows[0]?.busy ?? true
      },
      summary: async (client) => {
        const result = await client.query<{ n: number }>("SELECT count(*)::int AS n FROM graphile_worker._private_jobs")
        return { remaining_jobs: result.rows[0]?.n ?? -1 }
      },
      close: async () => {
        await utils.release()
        await pgPool.end()
      }
    }
  },
  startWorker: startPeer(name),
  waitReady: waitPeerReady
})

// graphile-worker's own logger would print its start-up lines into the orchestrator's output.
const quietGraphileLogger = new Logger(() => () => undefined)

const pgboss: System = {
  name: "pgboss",
  open: async (database, producerPool) => {
    const boss = new PgBoss({ connectionString: urlFor(database), max: producerPool, supervise: false, schedule: false })
    boss.on("error", () => undefined)
    await boss.start()
    await boss.createQueue(PGBOSS_QUEUE, { notify: true })
    return {
      enqueueBulk: async (from, count) => {
        for (let start = from; start < from + count; start += BULK_BATCH) {
          const jobs = Array.from({ length: Math.min(BULK_BATCH, from + count - start) }, (_, i) => ({ data: envelope(start + i) }))
          await boss.insert(PGBOSS_QUEUE, jobs)
        }
      },
      enqueueOne: async (seq) => {
        await boss.send(PGBOSS_QUEUE, envelope(seq))
      },
      busy: async (client) => {
        const result = await client.query<{ busy: boolean }>(
          "SELECT EXISTS (SELECT 1 FROM pgboss.job WHERE name = $1 AND state <> 'completed') AS busy",
          [PGBOSS_QUEUE]
        )
        return result.rows[0]?.busy ?? true
      },
      summary: async (client) => {
        const rows = await client.query<{ state: string; n: number }>(
          "SELECT state::text AS state, count(*)::int AS n FROM pgboss.job WHERE name = $1 GROUP BY state",
          [PGBOSS_QUEUE]
        )
        return Object.fromEntries(rows.rows.map((r) => [r.state, r.n]))
      },
      close: () => boss.stop({ graceful: false, close: true, timeout: 2_000 })
    }
  },
  startWorker: startPeer("pgboss"),
  waitReady: waitPeerReady
}

export const makeSystem = (name: SystemName, targetUrl: string, mode: DestinationMode): System => {
  switch (name) {
    case "ours":
    case "ours-defaults":
      return ours(targetUrl, mode, name)
    case "graphile":
    case "graphile-batch":
      return graphile(name)
    case "pgboss":
      return pgboss
  }
}
