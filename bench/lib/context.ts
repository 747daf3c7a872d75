/** What every phase needs: flags, the admin connection, the receiver, where logs go. */
import { join } from "node:path"
import type { BenchOptions } from "./args.js"
import type { Receiver } from "./children.js"
import { type Admin, sleep } from "./db.js"
import { machineCpu } from "./proc.js"
import { type DestinationMode, makeSystem, type System, type SystemName } from "./systems.js"

export interface Context {
  readonly options: BenchOptions
  readonly admin: Admin
  readonly receiver: Receiver
  readonly logDir: string
  readonly log: (line: string) => void
}

let logCounter = 0

/** A fresh log file path in the run's log directory. */
export const logFile = (ctx: Context, label: string): string => join(ctx.logDir, `${String(++logCounter).padStart(3, "0")}-${label}.log`)

export const systemOf = (ctx: Context, name: SystemName, mode: DestinationMode = ctx.options.destination): System =>
  makeSystem(name, ctx.receiver.url, mode)

/**
 * Extra environment of our worker (WORKER_BATCH_SIZE, NODE_OPTIONS). `ours` claims as many rows
 * as deliveries may be in flight (`--batch-size`, default the concurrency): the batching setting,
 * as graphile-batch is graphile-worker's; `ours-defaults` runs with the product's defaults.
 */
export const ourWorkerEnv = (ctx: Context, name: SystemName = "ours"): Record<string, string> => ({
  ...(name === "ours" ? { WORKER_BATCH_SIZE: String(ctx.options.batchSize ?? ctx.options.concurrency) } : {}),
  ...(ctx.options.workerNodeOptions === undefined ? {} : { NODE_OPTIONS: ctx.options.workerNodeOptions })
})

/**
 * Waits (up to `maxSeconds`) until the machine is quiet, i.e. less than 35 % of all cores busy
 * over half a second, and returns the busy share it saw last (0–100, all cores).
 */
export const quietGate = async (ctx: Context): Promise<number> => {
  const deadline = Date.now() + ctx.options.quietWaitSeconds * 1000
  for (;;) {
    const before = machineCpu()
    await sleep(500)
    const after = machineCpu()
    const busy = (100 * (after.busyMs - before.busyMs)) / Math.max(1, after.totalMs - before.totalMs)
    if (busy < 35 || Date.now() >= deadline) {
      if (busy >= 35 && ctx.options.quietWaitSeconds > 0) ctx.log(`  (machine still ${busy.toFixed(0)} % busy; going ahead)`)
      return busy
    }
  }
}
