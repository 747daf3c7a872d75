/**
 * A peer worker process: graphile-worker (library defaults, or with its batching options) or
 * pg-boss 12 (LISTEN/NOTIFY, batch fetch, burst), running the same sign+POST job as our worker.
 * Started by the orchestrator with PEER, DATABASE_URL, TARGET_URL, CONCURRENCY; reports `ready`
 * over IPC and stops gracefully on SIGTERM.
 */
import { run, type Runner } from "graphile-worker"
import { PgBoss } from "pg-boss"
import { GRAPHILE_TASK, type PeerEvent, PGBOSS_QUEUE, SECRET } from "../lib/common.js"
import { env, makeDeliverer } from "./deliver.js"

const peer = env("PEER")
const databaseUrl = env("DATABASE_URL")
const concurrency = Number(env("CONCURRENCY"))
const deliverer = makeDeliverer(env("TARGET_URL"), SECRET, concurrency)

const report = (message: PeerEvent) => {
  process.send?.(message)
}

const startGraphile = async (batching: boolean): Promise<() => Promise<void>> => {
  const runner: Runner = await run({
    connectionString: databaseUrl,
    concurrency,
    // graphile-worker warns unless the pool has a connection per job slot.
    maxPoolSize: concurrency + 1,
    noHandleSignals: true,
    taskList: {
      [GRAPHILE_TASK]: async (payload, helpers) => {
        await deliverer.send(`msg_${helpers.job.id}`, JSON.stringify(payload))
      }
    },
    // The batching preset of graphile-worker's own perfTest (website/docs/performance.md).
    ...(batching
      ? { preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } } }
      : {})
  })
  return () => runner.stop()
}

const startPgBoss = async (): Promise<() => Promise<void>> => {
  const boss = new PgBoss({ connectionString: databaseUrl, useListenNotify: true })
  boss.on("error", (error: Error) => report({ event: "error", message: error.message }))
  await boss.start()
  const loops = Math.max(1, Math.round(concurrency / 10))
  await boss.work<Record<string, unknown>>(
    PGBOSS_QUEUE,
    { localConcurrency: loops, batchSize: Math.max(1, Math.round(concurrency / loops)), burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 },
    async (jobs) => {
      await Promise.all(jobs.map((job) => deliverer.send(job.id, JSON.stringify(job.data))))
    }
  )
  return () => boss.stop({ graceful: true, timeout: 5_000 })
}

const main = async () => {
  const stop = peer === "graphile"
    ? await startGraphile(false)
    : peer === "graphile-batch"
    ? await startGraphile(true)
    : peer === "pgboss"
    ? await startPgBoss()
    : undefined
  if (stop === undefined) throw new Error(`unknown PEER ${peer}`)
  let stopping = false
  process.on("SIGTERM", () => {
    if (stopping) return
    stopping = true
    stop().then(() => deliverer.close()).finally(() => process.exit(0))
  })
  process.on("disconnect", () => process.kill(process.pid, "SIGTERM"))
  report({ event: "ready" })
}

main().catch((error: unknown) => {
  report({ event: "error", message: error instanceof Error ? error.message : String(error) })
  process.exit(1)
})
