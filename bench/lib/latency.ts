/**
 * Latency: with the worker running and idle, rows are enqueued one at a time (one library call
 * each, open loop: every call starts at its scheduled time whether or not earlier calls have
 * returned) at a fixed rate for a fixed time. For every row: enqueue call start → first request
 * at the receiver (end to end) and call return (commit) → receive.
 */
import { type Child } from "./children.js"
import { nowMs } from "./common.js"
import { type Context, logFile, ourWorkerEnv, quietGate, systemOf } from "./context.js"
import { sleep } from "./db.js"
import { cpuMsOf } from "./proc.js"
import { percentile } from "./stats.js"
import type { Queue, SystemName } from "./systems.js"

/** Connections the producer's library uses for enqueue calls (the libraries' default pool size). */
export const PRODUCER_POOL = 10

export interface Percentiles {
  readonly p50: number | null
  readonly p90: number | null
  readonly p99: number | null
  readonly max: number | null
}

export interface RateResult {
  readonly rate: number
  readonly seconds: number
  readonly count: number
  readonly received: number
  readonly failedEnqueues: number
  /** Enqueue call start → first receive, ms. */
  readonly endToEnd: Percentiles
  /** Enqueue call returned (committed) → first receive, ms. */
  readonly commitToReceive: Percentiles
  /** How long the enqueue call itself took, ms. */
  readonly enqueueCall: Percentiles
  /** Last scheduled enqueue → last enqueue call returned, ms (the producer falling behind). */
  readonly producerLagMs: number | null
  /** Last enqueue call returned → last row received, ms (the worker falling behind). */
  readonly drainMs: number | null
  readonly keptUp: boolean
  /** The worker's part alone: every row received, within 1 s of its enqueue call returning (p99), and none left after the last. */
  readonly workerKeptUp: boolean
  readonly workerCpuMsPerDelivery: number | null
}

export interface LatencyResult {
  readonly system: SystemName
  readonly repeat: number
  readonly ok: boolean
  readonly error?: string
  readonly machineBusyBeforePct: number
  readonly rates: ReadonlyArray<RateResult>
}

/** Behind by more than this at the end of a phase = did not keep up. */
const KEEP_UP_SLACK_MS = 1_000

const percentiles = (values: Array<number>): Percentiles => {
  values.sort((a, b) => a - b)
  return { p50: percentile(values, 50), p90: percentile(values, 90), p99: percentile(values, 99), max: values.at(-1) ?? null }
}

const runRate = async (ctx: Context, queue: Queue, worker: Child, rate: number, seconds = ctx.options.latencySeconds): Promise<RateResult> => {
  const count = Math.max(1, Math.round(rate * seconds))
  await ctx.receiver.reset(count, { recordSeqs: count })
  const reached = ctx.receiver.next("reached")
  const callStart = new Float64Array(count)
  const callEnd = new Float64Array(count)
  let failedEnqueues = 0
  const calls: Array<Promise<void>> = []
  const interval = 1000 / rate
  const cpu0 = cpuMsOf(worker.pid) ?? 0
  const start = nowMs() + 20
  let i = 0
  while (i < count) {
    const now = nowMs()
    while (i < count && start + i * interval <= now) {
      const seq = i++
      callStart[seq] = nowMs()
      calls.push(queue.enqueueOne(seq).then(
        () => {
          callEnd[seq] = nowMs()
        },
        () => {
          failedEnqueues++
        }
      ))
    }
    if (i < count) await sleep(Math.max(0, start + i * interval - nowMs() - 0.5))
  }
  const lastScheduled = start + (count - 1) * interval
  await Promise.race([Promise.all(calls), sleep(15_000)])
  const lastReturned = Math.max(...callEnd)
  await Promise.race([reached.promise, sleep(10_000)])
  reached.cancel()
  const cpu1 = cpuMsOf(worker.pid) ?? cpu0
  const times = await ctx.receiver.seqTimes()
  const endToEnd: Array<number> = []
  const commitToReceive: Array<number> = []
  const enqueueCall: Array<number> = []
  let received = 0
  let lastReceived = 0
  for (let seq = 0; seq < count; seq++) {
    const at = times[seq] ?? 0
    if (callEnd[seq]! > 0) enqueueCall.push(callEnd[seq]! - callStart[seq]!)
    if (at === 0) continue
    received++
    lastReceived = Math.max(lastReceived, at)
    endToEnd.push(at - callStart[seq]!)
    if (callEnd[seq]! > 0) commitToReceive.push(at - callEnd[seq]!)
  }
  const producerLagMs = lastReturned > 0 ? lastReturned - lastScheduled : null
  const drainMs = received > 0 && lastReturned > 0 ? lastReceived - lastReturned : null
  return {
    rate,
    seconds,
    count,
    received,
    failedEnqueues,
    endToEnd: percentiles(endToEnd),
    commitToReceive: percentiles(commitToReceive),
    enqueueCall: percentiles(enqueueCall),
    producerLagMs,
    drainMs,
    workerKeptUp: received === count && drainMs !== null && drainMs <= KEEP_UP_SLACK_MS &&
      (percentile([...commitToReceive].sort((a, b) => a - b), 99) ?? Infinity) <= KEEP_UP_SLACK_MS,
    keptUp: received === count && failedEnqueues === 0 && producerLagMs !== null && producerLagMs <= KEEP_UP_SLACK_MS &&
      drainMs !== null && drainMs <= KEEP_UP_SLACK_MS,
    workerCpuMsPerDelivery: received > 0 ? (cpu1 - cpu0) / received : null
  }
}

export const latency = async (ctx: Context, name: SystemName, repeat: number): Promise<LatencyResult> => {
  const system = systemOf(ctx, name)
  const machineBusyBeforePct = await quietGate(ctx)
  const database = await ctx.admin.createDatabase(`${name}_latency`)
  let queue: Queue | undefined
  let worker: Child | undefined
  const rates: Array<RateResult> = []
  try {
    queue = await system.open(database, PRODUCER_POOL)
    worker = await system.startWorker({
      database,
      targetUrl: ctx.receiver.url,
      concurrency: ctx.options.concurrency,
      logFile: logFile(ctx, `latency-${name}-r${repeat}`),
      probeFile: "",
      env: ourWorkerEnv(ctx, name),
      cpuProfileDir: undefined,
      nodeFlags: ctx.options.workerNodeFlags
    })
    if (!(await system.waitReady(worker, 30_000))) {
      return { system: name, repeat, ok: false, error: `worker not ready:\n${worker.tail()}`, machineBusyBeforePct, rates }
    }
    // Let the worker finish its first (empty) claim and settle into waiting.
    await sleep(1_000)
    // Warm up as a producer would find a running worker: compiled code, open sockets, planned
    // statements. Every system gets the same, and none of it is counted.
    const first = ctx.options.rates[0]
    if (first !== undefined && ctx.options.latencyWarmupSeconds > 0) {
      await runRate(ctx, queue, worker, first, ctx.options.latencyWarmupSeconds)
      await sleep(500)
    }
    for (const rate of ctx.options.rates) {
      rates.push(await runRate(ctx, queue, worker, rate))
      await sleep(500)
    }
    return { system: name, repeat, ok: true, machineBusyBeforePct, rates }
  } catch (error) {
    return { system: name, repeat, ok: false, error: error instanceof Error ? error.stack ?? error.message : String(error), machineBusyBeforePct, rates }
  } finally {
    if (worker !== undefined) await worker.stop()
    if (queue !== undefined) await queue.close().catch(() => undefined)
    await ctx.admin.dropDatabase(database).catch(() => undefined)
  }
}
