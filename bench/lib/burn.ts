/**
 * Burn-down: N rows enqueued in bulk before the worker starts; deliveries/s from the first request
 * at the receiver until the receiver has every webhook-id AND the database shows every row done.
 * Over that window: worker CPU, PostgreSQL CPU (the database's backends + the shared WAL writer,
 * checkpointer, background writer), receiver CPU, other load on the machine. Over the worker's
 * whole life: statements it sent (probe) and transactions the server counted.
 */
import { mkdirSync, readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import type Pg from "pg"
import { type Child, waitFor } from "./children.js"
import { nowMs } from "./common.js"
import { type Context, logFile, ourWorkerEnv, quietGate, systemOf } from "./context.js"
import { connect, sleep } from "./db.js"
import { cpuMsOf, machineCpu, memoryOf, PostgresCpu } from "./proc.js"
import { type ProfileSummary, summariseProfile } from "./profile.js"
import type { Queue, SystemName } from "./systems.js"

export interface BurnResult {
  readonly system: SystemName
  readonly repeat: number
  readonly n: number
  readonly ok: boolean
  readonly error?: string
  readonly deliveriesPerSec: number | null
  readonly wallMs: number | null
  /** Worker process spawn → first request at the receiver (start-up, connect, first claim). */
  readonly startupMs: number | null
  /** Receiver had every id → database showed every row done (final completion flush). */
  readonly settleMs: number | null
  readonly workerCpuMsPerDelivery: number | null
  /** The database's backends plus the shared auxiliary processes. */
  readonly pgCpuMsPerDelivery: number | null
  readonly pgBackendCpuMsPerDelivery: number | null
  readonly pgBackends: number | null
  readonly receiverCpuMsPerDelivery: number | null
  /** CPU used on the machine by anything else in the window, in % of one core. */
  readonly otherCpuPctOfCore: number | null
  readonly machineBusyBeforePct: number
  readonly peakRssMb: number | null
  /** node-postgres queries sent by the worker process over its whole life, per delivery. */
  readonly statementsPerDelivery: number | null
  /** Transactions the server counted for the database over the worker's life, per delivery. */
  readonly transactionsPerDelivery: number | null
  readonly duplicates: number
  readonly signaturesChecked: number
  readonly signaturesFailed: number
  readonly finalState: Record<string, number>
  /** WAL written by the whole server over the window, per delivery (other tenants included). */
  readonly walBytesPerDelivery: number | null
  /** Peak heap figures of the worker (MB, from the probe): heapUsed, heapTotal, external, ... */
  readonly peakMemoryMb: Record<string, number> | null
  /** Our worker: bytes of log output per delivery. */
  readonly logBytesPerDelivery: number | null
  readonly profile?: ProfileSummary
}

const monotonicUs = () => Number(process.hrtime.bigint() / 1000n)

export const burnDown = async (ctx: Context, name: SystemName, repeat: number): Promise<BurnResult> => {
  const { n, concurrency } = ctx.options
  const system = systemOf(ctx, name)
  const machineBusyBeforePct = await quietGate(ctx)
  const database = await ctx.admin.createDatabase(`${name}_burn`)
  const failed = (error: string, extra: Partial<BurnResult> = {}): BurnResult => ({
    system: name,
    repeat,
    n,
    ok: false,
    error,
    deliveriesPerSec: null,
    wallMs: null,
    startupMs: null,
    settleMs: null,
    workerCpuMsPerDelivery: null,
    pgCpuMsPerDelivery: null,
    pgBackendCpuMsPerDelivery: null,
    pgBackends: null,
    receiverCpuMsPerDelivery: null,
    otherCpuPctOfCore: null,
    machineBusyBeforePct,
    peakRssMb: null,
    statementsPerDelivery: null,
    transactionsPerDelivery: null,
    walBytesPerDelivery: null,
    duplicates: 0,
    signaturesChecked: 0,
    signaturesFailed: 0,
    finalState: {},
    peakMemoryMb: null,
    logBytesPerDelivery: null,
    ...extra
  })
  let child: Child | undefined
  let queue: Queue | undefined
  let poller: { client: Pg.Client; pid: number } | undefined
  let sampler: NodeJS.Timeout | undefined
  const profileDir = ctx.options.cpuProfile && name.startsWith("ours") ? join(ctx.logDir, `prof-${name}-${repeat}`) : undefined
  try {
    queue = await system.open(database, 4)
    await queue.enqueueBulk(0, n)
    const { busy, summary } = queue
    // The producer's connections go away, so the server's counters below are the worker's alone.
    await queue.close()
    queue = undefined
    await ctx.admin.waitForNoBackends(database, 5_000)
    const transactions0 = await ctx.admin.transactions(database)
    poller = await connect(database, "webhook-worker bench poller")
    let pollerStatements = 1
    const pgCpu = new PostgresCpu(database, new Set([poller.pid]))
    await ctx.receiver.reset(n)
    const first = ctx.receiver.next("first")
    const reached = ctx.receiver.next("reached")
    const probeFile = join(ctx.logDir, `probe-${name}-${repeat}.json`)
    if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true })
    const workerLog = logFile(ctx, `burn-${name}-r${repeat}`)
    const spawnedAt = nowMs()
    child = await system.startWorker({
      database,
      targetUrl: ctx.receiver.url,
      concurrency,
      logFile: workerLog,
      probeFile,
      env: ourWorkerEnv(ctx, name),
      cpuProfileDir: profileDir,
      nodeFlags: ctx.options.workerNodeFlags
    })
    const worker = child
    const exited = worker.exited.then(() => "exited" as const)
    const timeoutMs = ctx.options.burnTimeoutSeconds * 1000
    const startedAt = await Promise.race([first.promise, exited, sleep(60_000).then(() => "timeout" as const)])
    if (typeof startedAt !== "number") {
      first.cancel()
      reached.cancel()
      return failed(`no delivery arrived (${startedAt}${worker.exitSignal === null ? "" : `, ${worker.exitSignal}`}):\n${worker.tail()}`)
    }
    const startMonoUs = monotonicUs()
    const workerCpu0 = cpuMsOf(worker.pid) ?? 0
    const receiverCpu0 = cpuMsOf(ctx.receiver.child.pid) ?? 0
    const harnessCpu0 = process.cpuUsage()
    const machine0 = machineCpu()
    pgCpu.begin()
    const wal0 = await ctx.admin.walPosition()
    sampler = setInterval(() => pgCpu.poll(), 100)
    const reachedAt = await Promise.race([reached.promise, exited, sleep(timeoutMs).then(() => "timeout" as const)])
    if (typeof reachedAt !== "number") {
      reached.cancel()
      const stats = await ctx.receiver.stats()
      return failed(`${reachedAt} after ${stats.unique} of ${n} deliveries:\n${worker.tail()}`)
    }
    const pollingClient = poller.client
    const settled = await waitFor(async () => {
      pollerStatements++
      return !(await busy(pollingClient))
    }, 30_000, 5)
    const endAt = nowMs()
    const endMonoUs = monotonicUs()
    clearInterval(sampler)
    sampler = undefined
    const pg = pgCpu.end()
    const workerCpu1 = cpuMsOf(worker.pid) ?? workerCpu0
    const receiverCpu1 = cpuMsOf(ctx.receiver.child.pid) ?? receiverCpu0
    const harnessCpu = process.cpuUsage(harnessCpu0)
    const machine1 = machineCpu()
    const peakRssMb = memoryOf(worker.pid)?.peakRssMb ?? null
    const walBytes = await ctx.admin.walBytesSince(wal0)
    if (!settled) return failed(`the receiver had all ${n} ids but the database did not show them done within 30 s:\n${worker.tail()}`)
    await worker.stop()
    const finalState = await summary(poller.client)
    pollerStatements++
    await poller.client.end()
    poller = undefined
    await ctx.admin.waitForNoBackends(database, 5_000)
    const transactions = (await ctx.admin.transactions(database)) - transactions0 - pollerStatements
    const stats = await ctx.receiver.stats()
    const wallMs = endAt - startedAt
    const workerMs = workerCpu1 - workerCpu0
    const receiverMs = receiverCpu1 - receiverCpu0
    const harnessMs = (harnessCpu.user + harnessCpu.system) / 1000
    const machineBusyMs = machine1.busyMs - machine0.busyMs
    const otherMs = machineBusyMs - workerMs - receiverMs - harnessMs - pg.backendsMs - pg.auxiliaryMs
    const probe = readProbe(probeFile)
    const logBytes = name.startsWith("ours") ? fileSize(workerLog) : null
    const profile = profileDir === undefined ? undefined : profileOf(profileDir, startMonoUs, endMonoUs)
    return {
      system: name,
      repeat,
      n,
      ok: stats.unique === n,
      ...(stats.unique === n ? {} : { error: `receiver saw ${stats.unique} of ${n} ids` }),
      deliveriesPerSec: (n * 1000) / wallMs,
      wallMs,
      startupMs: startedAt - spawnedAt,
      settleMs: endAt - reachedAt,
      workerCpuMsPerDelivery: workerMs / n,
      pgCpuMsPerDelivery: (pg.backendsMs + pg.auxiliaryMs) / n,
      pgBackendCpuMsPerDelivery: pg.backendsMs / n,
      pgBackends: pg.backends,
      receiverCpuMsPerDelivery: receiverMs / n,
      otherCpuPctOfCore: (100 * otherMs) / wallMs,
      machineBusyBeforePct,
      peakRssMb,
      statementsPerDelivery: probe === null ? null : probe / n,
      transactionsPerDelivery: transactions / n,
      walBytesPerDelivery: walBytes / n,
      duplicates: stats.duplicates,
      signaturesChecked: stats.signaturesChecked,
      signaturesFailed: stats.signaturesFailed,
      finalState,
      peakMemoryMb: readProbeMemory(probeFile),
      logBytesPerDelivery: logBytes === null ? null : logBytes / n,
      ...(profile === undefined ? {} : { profile })
    }
  } catch (error) {
    return failed(error instanceof Error ? error.stack ?? error.message : String(error))
  } finally {
    if (sampler !== undefined) clearInterval(sampler)
    if (child !== undefined) await child.stop()
    if (queue !== undefined) await queue.close().catch(() => undefined)
    if (poller !== undefined) await poller.client.end().catch(() => undefined)
    await ctx.admin.dropDatabase(database).catch(() => undefined)
  }
}

interface ProbeOutput {
  readonly queries?: number
  readonly peakMemory?: Record<string, number>
}

const probeOutput = (file: string): ProbeOutput => {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as ProbeOutput
  } catch {
    return {}
  }
}

/** The worker's final statement count, written by the probe at exit. */
export const readProbe = (file: string): number | null => {
  const queries = probeOutput(file).queries
  return typeof queries === "number" ? queries : null
}

/** The worker's peak V8 heap figures (process.memoryUsage, sampled), in MB. */
export const readProbeMemory = (file: string): Record<string, number> | null => {
  const peak = probeOutput(file).peakMemory
  return peak === undefined ? null : Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, Math.round(v / 104857.6) / 10]))
}

const fileSize = (file: string): number | null => {
  try {
    return readFileSync(file).length
  } catch {
    return null
  }
}

const profileOf = (dir: string, fromUs: number, toUs: number): ProfileSummary | undefined => {
  const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"))
  if (file === undefined) return undefined
  const summary = summariseProfile(join(dir, file), fromUs, toUs)
  return summary
}
