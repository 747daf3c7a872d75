/**
 * Memory: our worker with MAX_CONCURRENT_DELIVERIES = 100 against a receiver that holds every
 * response, so ~100 deliveries are in flight, with 100k rows due. Peak RSS (VmHWM) of the worker
 * process over a fixed time.
 */
import { join } from "node:path"
import { readProbeMemory } from "./burn.js"
import { type Child } from "./children.js"
import { type Context, logFile, ourWorkerEnv, quietGate, systemOf } from "./context.js"
import { sleep } from "./db.js"
import { memoryOf } from "./proc.js"
import type { Queue } from "./systems.js"

export interface RssResult {
  readonly ok: boolean
  readonly error?: string
  readonly dueRows: number
  readonly maxConcurrentDeliveries: number
  readonly responseDelayMs: number
  readonly seconds: number
  readonly peakRssMb: number | null
  /** RSS sampled every 200 ms: highest sample (VmHWM also counts start-up). */
  readonly maxSampledRssMb: number | null
  readonly maxInFlightAtReceiver: number
  readonly delivered: number
  /** Peak V8 heap figures of the worker (MB): heapUsed, heapTotal, external, arrayBuffers. */
  readonly peakMemoryMb: Record<string, number> | null
}

export const rss = async (ctx: Context): Promise<RssResult> => {
  const { rssRows: dueRows, rssInFlight: maxConcurrentDeliveries, rssDelayMs: responseDelayMs, rssSeconds: seconds } = ctx.options
  const base = { dueRows, maxConcurrentDeliveries, responseDelayMs, seconds, peakMemoryMb: null }
  const probeFile = join(ctx.logDir, "probe-rss.json")
  const database = await ctx.admin.createDatabase("rss")
  let queue: Queue | undefined
  let worker: Child | undefined
  try {
    const system = systemOf(ctx, "ours")
    queue = await system.open(database, 4)
    await queue.enqueueBulk(0, dueRows)
    await queue.close()
    queue = undefined
    await quietGate(ctx)
    await ctx.receiver.reset(dueRows, { delayMs: responseDelayMs })
    const first = ctx.receiver.next("first")
    worker = await system.startWorker({
      database,
      targetUrl: ctx.receiver.url,
      concurrency: maxConcurrentDeliveries,
      logFile: logFile(ctx, "rss-ours"),
      probeFile,
      env: ourWorkerEnv(ctx),
      cpuProfileDir: undefined,
      nodeFlags: ctx.options.workerNodeFlags
    })
    const started = await Promise.race([first.promise, sleep(60_000).then(() => null)])
    if (started === null) {
      first.cancel()
      return { ...base, ok: false, error: `no delivery arrived:\n${worker.tail()}`, peakRssMb: null, maxSampledRssMb: null, maxInFlightAtReceiver: 0, delivered: 0 }
    }
    let maxSampled = 0
    const deadline = Date.now() + seconds * 1000
    while (Date.now() < deadline && worker.running) {
      maxSampled = Math.max(maxSampled, memoryOf(worker.pid)?.rssMb ?? 0)
      await sleep(200)
    }
    const peakRssMb = memoryOf(worker.pid)?.peakRssMb ?? null
    const stats = await ctx.receiver.stats()
    await worker.stop(40_000)
    return {
      ...base,
      ok: peakRssMb !== null,
      peakRssMb,
      maxSampledRssMb: maxSampled,
      maxInFlightAtReceiver: stats.maxInFlight,
      delivered: stats.unique,
      peakMemoryMb: readProbeMemory(probeFile)
    }
  } catch (error) {
    return { ...base, ok: false, error: error instanceof Error ? error.message : String(error), peakRssMb: null, maxSampledRssMb: null, maxInFlightAtReceiver: 0, delivered: 0 }
  } finally {
    if (worker !== undefined) await worker.stop(40_000)
    if (queue !== undefined) await queue.close().catch(() => undefined)
    await ctx.receiver.reset(0)
    await ctx.admin.dropDatabase(database).catch(() => undefined)
  }
}
