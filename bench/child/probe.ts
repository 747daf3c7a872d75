/**
 * Preloaded (`node --import`) into each worker process, ours and the peers alike: counts the
 * statements the process sends through node-postgres (each `Client#query` is one round trip)
 * and the peak JS heap figures, and writes them to BENCH_PROBE_FILE at exit (writing it periodically cost the worker a
 * measurable share of its CPU). It changes nothing else; without BENCH_PROBE_FILE it does nothing.
 */
import { writeFileSync } from "node:fs"
import { createRequire } from "node:module"

interface QueryCounting {
  prototype: { query: (...args: Array<unknown>) => unknown }
}

const file = process.env.BENCH_PROBE_FILE
if (file !== undefined && file !== "") {
  const require = createRequire(`${process.cwd()}/`)
  const pg = require("pg") as { Client: QueryCounting }
  let queries = 0
  const original = pg.Client.prototype.query
  pg.Client.prototype.query = function(this: unknown, ...args: Array<unknown>) {
    queries++
    return original.apply(this, args)
  }
  // Peak heap figures, sampled (cheap: no I/O) to explain the process's RSS.
  const peak = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }
  const sample = () => {
    const usage = process.memoryUsage()
    peak.rss = Math.max(peak.rss, usage.rss)
    peak.heapTotal = Math.max(peak.heapTotal, usage.heapTotal)
    peak.heapUsed = Math.max(peak.heapUsed, usage.heapUsed)
    peak.external = Math.max(peak.external, usage.external)
    peak.arrayBuffers = Math.max(peak.arrayBuffers, usage.arrayBuffers)
  }
  setInterval(sample, 250).unref()
  const write = () => {
    sample()
    try {
      writeFileSync(file, JSON.stringify({ queries, at: performance.timeOrigin + performance.now(), peakMemory: peak }))
    } catch {
      // The orchestrator may have removed the directory already at exit.
    }
  }
  process.on("exit", write)
}
