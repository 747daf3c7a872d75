/** Medians over repeats, the targets of issue 6, and the one table the benchmark prints. */
import type { BenchOptions } from "./args.js"
import type { BurnResult } from "./burn.js"
import type { PostCeiling, SqlCeiling } from "./ceilings.js"
import type { ComponentResult } from "./components.js"
import type { LatencyResult } from "./latency.js"
import type { RssResult } from "./rss.js"
import type { ScaleResult } from "./scale.js"
import { cell, median } from "./stats.js"
import { LABELS, type SystemName } from "./systems.js"

export interface Results {
  readonly burn: ReadonlyArray<BurnResult>
  readonly latency: ReadonlyArray<LatencyResult>
  readonly postCeiling: ReadonlyArray<PostCeiling>
  readonly sqlCeiling: ReadonlyArray<SqlCeiling>
  readonly scale: ScaleResult | undefined
  readonly rss: RssResult | undefined
  readonly components: ReadonlyArray<ComponentResult>
}

export interface RateSummary {
  readonly rate: number
  readonly endToEndP50: number | null
  readonly endToEndP90: number | null
  readonly endToEndP99: number | null
  readonly commitToReceiveP50: number | null
  readonly commitToReceiveP99: number | null
  readonly enqueueCallP50: number | null
  /** Repeats in which the system kept up, of those run. */
  readonly keptUp: string
  readonly keptUpAll: boolean
  /** Repeats in which the worker kept up (commit→receive), whatever the producer did. */
  readonly workerKeptUp: string
  readonly workerKeptUpAll: boolean
  readonly workerCpuMsPerDelivery: number | null
}

export interface SystemSummary {
  readonly system: SystemName
  readonly label: string
  readonly burnRuns: number
  readonly burnFailures: number
  readonly deliveriesPerSec: number | null
  readonly deliveriesPerSecRange: readonly [number | null, number | null]
  readonly workerCpuMsPerDelivery: number | null
  readonly pgCpuMsPerDelivery: number | null
  readonly pgBackendCpuMsPerDelivery: number | null
  readonly receiverCpuMsPerDelivery: number | null
  readonly peakRssMb: number | null
  readonly statementsPerDelivery: number | null
  readonly transactionsPerDelivery: number | null
  readonly walBytesPerDelivery: number | null
  readonly startupMs: number | null
  readonly otherCpuPctOfCore: number | null
  readonly duplicates: number
  readonly signaturesFailed: number
  readonly signaturesChecked: number
  readonly logBytesPerDelivery: number | null
  readonly latency: ReadonlyArray<RateSummary>
}

export interface Target {
  readonly target: string
  readonly measured: string
  readonly pass: boolean | null
}

const med = <T>(rows: ReadonlyArray<T>, pick: (row: T) => number | null | undefined): number | null =>
  median(rows.map(pick).filter((v): v is number => typeof v === "number"))

export const summarise = (options: BenchOptions, results: Results): ReadonlyArray<SystemSummary> =>
  options.systems.map((system) => {
    const runs = results.burn.filter((r) => r.system === system)
    const ok = runs.filter((r) => r.ok)
    const rates = options.rates.map((rate): RateSummary => {
      const phases = results.latency
        .filter((l) => l.system === system)
        .flatMap((l) => l.rates.filter((r) => r.rate === rate))
      const kept = phases.filter((p) => p.keptUp).length
      const workerKept = phases.filter((p) => p.workerKeptUp).length
      return {
        rate,
        endToEndP50: med(phases, (p) => p.endToEnd.p50),
        endToEndP90: med(phases, (p) => p.endToEnd.p90),
        endToEndP99: med(phases, (p) => p.endToEnd.p99),
        commitToReceiveP50: med(phases, (p) => p.commitToReceive.p50),
        commitToReceiveP99: med(phases, (p) => p.commitToReceive.p99),
        enqueueCallP50: med(phases, (p) => p.enqueueCall.p50),
        keptUp: `${kept}/${phases.length}`,
        keptUpAll: phases.length > 0 && kept === phases.length,
        workerKeptUp: `${workerKept}/${phases.length}`,
        workerKeptUpAll: phases.length > 0 && workerKept === phases.length,
        workerCpuMsPerDelivery: med(phases, (p) => p.workerCpuMsPerDelivery)
      }
    })
    const dps = ok.map((r) => r.deliveriesPerSec).filter((v): v is number => v !== null)
    return {
      system,
      label: LABELS[system],
      burnRuns: runs.length,
      burnFailures: runs.length - ok.length,
      deliveriesPerSec: median(dps),
      deliveriesPerSecRange: [dps.length > 0 ? Math.min(...dps) : null, dps.length > 0 ? Math.max(...dps) : null],
      workerCpuMsPerDelivery: med(ok, (r) => r.workerCpuMsPerDelivery),
      pgCpuMsPerDelivery: med(ok, (r) => r.pgCpuMsPerDelivery),
      pgBackendCpuMsPerDelivery: med(ok, (r) => r.pgBackendCpuMsPerDelivery),
      receiverCpuMsPerDelivery: med(ok, (r) => r.receiverCpuMsPerDelivery),
      peakRssMb: med(ok, (r) => r.peakRssMb),
      statementsPerDelivery: med(ok, (r) => r.statementsPerDelivery),
      transactionsPerDelivery: med(ok, (r) => r.transactionsPerDelivery),
      walBytesPerDelivery: med(ok, (r) => r.walBytesPerDelivery),
      startupMs: med(ok, (r) => r.startupMs),
      otherCpuPctOfCore: med(ok, (r) => r.otherCpuPctOfCore),
      duplicates: runs.reduce((sum, r) => sum + r.duplicates, 0),
      signaturesFailed: runs.reduce((sum, r) => sum + r.signaturesFailed, 0),
      signaturesChecked: runs.reduce((sum, r) => sum + r.signaturesChecked, 0),
      logBytesPerDelivery: med(ok, (r) => r.logBytesPerDelivery),
      latency: rates
    }
  })

export const ceilingsOf = (results: Results) => ({
  signPostPerSec: med(results.postCeiling.filter((c) => c.ok), (c) => c.requestsPerSec),
  signPostClientCpuMs: med(results.postCeiling.filter((c) => c.ok), (c) => c.clientCpuMsPerRequest),
  signPostReceiverCpuMs: med(results.postCeiling.filter((c) => c.ok), (c) => c.receiverCpuMsPerRequest),
  sqlRowsPerSec: med(results.sqlCeiling.filter((c) => c.ok), (c) => c.rowsPerSec),
  sqlPgCpuMsPerRow: med(results.sqlCeiling.filter((c) => c.ok), (c) => c.pgCpuMsPerRow)
})

const ratio = (a: number | null | undefined, b: number | null | undefined) => (a != null && b != null && b > 0 ? a / b : null)

/**
 * Ours ÷ the other, repeat by repeat: each repeat runs the systems back to back, so a ratio
 * within one repeat cancels the shared machine's drift between repeats, which a ratio of two
 * medians (taken from different repeats) does not.
 */
export interface PairedRatio {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly pairs: number
}

const paired = (ours: ReadonlyMap<number, number>, other: ReadonlyMap<number, number>): PairedRatio | null => {
  const ratios: Array<number> = []
  for (const [repeat, mine] of ours) {
    const theirs = other.get(repeat)
    if (theirs !== undefined && theirs > 0) ratios.push(mine / theirs)
  }
  const middle = median(ratios)
  return middle === null ? null : { median: middle, min: Math.min(...ratios), max: Math.max(...ratios), pairs: ratios.length }
}

const ratesByRepeat = <T extends { readonly repeat: number; readonly ok: boolean }>(
  rows: ReadonlyArray<T>,
  rate: (row: T) => number | null
): Map<number, number> => {
  const byRepeat = new Map<number, number>()
  for (const row of rows) {
    const value = row.ok ? rate(row) : null
    if (typeof value === "number" && Number.isFinite(value)) byRepeat.set(row.repeat, value)
  }
  return byRepeat
}

const burnRates = (results: Results, system: SystemName) =>
  ratesByRepeat(results.burn.filter((r) => r.system === system), (r) => r.deliveriesPerSec)

export const pairedVs = (results: Results, peer: SystemName): PairedRatio | null => paired(burnRates(results, "ours"), burnRates(results, peer))

export const pairedVsCeiling = (results: Results): PairedRatio | null =>
  paired(burnRates(results, "ours"), ratesByRepeat(results.postCeiling, (c) => c.requestsPerSec))

const pairedText = (r: PairedRatio, format: (v: number) => string) =>
  r.pairs === 1 ? format(r.median) : `${format(r.median)} repeat by repeat (median of ${r.pairs}, ${format(r.min)}–${format(r.max)})`

export const targets = (summaries: ReadonlyArray<SystemSummary>, results: Results): ReadonlyArray<Target> => {
  const of = (system: SystemName) => summaries.find((s) => s.system === system)
  const ours = of("ours")
  const ceilings = ceilingsOf(results)
  const list: Array<Target> = []
  // Judged repeat by repeat (see PairedRatio); the ratio of the medians is shown beside it.
  const vs = (peer: SystemName, factor: number) => {
    const r = pairedVs(results, peer)
    const ofMedians = ratio(ours?.deliveriesPerSec, of(peer)?.deliveriesPerSec)
    list.push({
      target: `deliveries/s ≥ ${factor}× ${LABELS[peer]}`,
      measured: r === null
        ? "not measured"
        : `${pairedText(r, (v) => `${v.toFixed(2)}×`)}; medians ${cell(ours?.deliveriesPerSec)} vs ${cell(of(peer)?.deliveriesPerSec)} = ${cell(ofMedians)}×`,
      pass: r === null ? null : r.median >= factor
    })
  }
  vs("graphile-batch", 1.5)
  vs("pgboss", 2)
  const ceilingShare = pairedVsCeiling(results)
  const shareOfMedians = ratio(ours?.deliveriesPerSec, ceilings.signPostPerSec)
  const percent = (v: number | null) => (v === null ? "–" : `${(100 * v).toFixed(0)} %`)
  list.push({
    target: "deliveries/s ≥ 50 % of the sign+POST ceiling",
    measured: ceilingShare === null
      ? "not measured"
      : `${pairedText(ceilingShare, percent)}; medians ${cell(ours?.deliveriesPerSec)} of ${cell(ceilings.signPostPerSec)} = ${percent(shareOfMedians)}`,
    pass: ceilingShare === null ? null : ceilingShare.median >= 0.5
  })
  const at = (rate: number) => ours?.latency.find((l) => l.rate === rate)
  const p99 = at(100)?.endToEndP99
  list.push({
    target: "p99 enqueue→receive ≤ 25 ms at 100/s",
    measured: p99 == null ? "not measured" : `${p99.toFixed(1)} ms`,
    pass: p99 == null ? null : p99 <= 25
  })
  const fast = at(1000)
  list.push({
    target: "the worker keeps up at 1,000/s (commit→receive p99 ≤ 1 s, drained within 1 s)",
    measured: fast === undefined || fast.workerKeptUp === "0/0"
      ? "not measured"
      : `${fast.workerKeptUp} repeats (commit→receive p99 ${cell(fast.commitToReceiveP99, 1)} ms; producer and worker together: ${fast.keptUp}, enqueue→receive p99 ${cell(fast.endToEndP99, 1)} ms)`,
    pass: fast === undefined || fast.workerKeptUp === "0/0" ? null : fast.workerKeptUpAll
  })
  const rss = results.rss
  const rssConditions = rss !== undefined && rss.dueRows >= 100_000 && rss.maxInFlightAtReceiver >= 100
  list.push({
    target: "peak RSS ≤ 150 MB, 100 in flight, 100k due rows",
    measured: rss?.peakRssMb == null
      ? "not measured"
      : `${rss.peakRssMb.toFixed(0)} MB (${rss.maxInFlightAtReceiver} in flight, ${rss.dueRows.toLocaleString("en-US")} due${rssConditions ? "" : "; not the target's conditions"})`,
    pass: rss?.peakRssMb == null ? null : rssConditions ? rss.peakRssMb <= 150 : rss.peakRssMb > 150 ? false : null
  })
  const scale = results.scale
  const growths = Object.entries(scale?.growth ?? {})
  const largest = Math.max(0, ...(scale?.points.map((p) => p.delivered) ?? []))
  const flat = growths.every(([, v]) => v !== null && v <= 2)
  list.push({
    target: "claim cost flat (≤ 2×) from 10k to 1M delivered rows (server time)",
    measured: growths.length === 0
      ? "not measured"
      : `${growths.map(([k, v]) => `${k.replace("due_", "")} due: ${v === null ? "–" : `${v.toFixed(2)}×`}`).join(", ")} (up to ${largest.toLocaleString("en-US")} rows${largest >= 1_000_000 ? "" : "; not the target's 1M"})`,
    // Below 1M rows a pass proves nothing yet, but a failure already counts.
    pass: growths.length === 0 ? null : largest >= 1_000_000 ? flat : flat ? null : false
  })
  return list
}

/** The one table: a Markdown table (pasteable into bench/README.md) plus the targets. */
export const table = (options: BenchOptions, summaries: ReadonlyArray<SystemSummary>, results: Results): string => {
  const ceilings = ceilingsOf(results)
  const ours = summaries.find((s) => s.system === "ours")
  const header = ["", ...summaries.map((s) => (s.system === "ours" ? "**ours**" : s.system)), "ceiling"]
  const rows: Array<Array<string>> = []
  const add = (label: string, value: (s: SystemSummary) => string, ceiling = "") => rows.push([label, ...summaries.map(value), ceiling])
  add("burn-down deliveries/s (median)", (s) => cell(s.deliveriesPerSec), ceilings.signPostPerSec === null ? "" : `${cell(ceilings.signPostPerSec)} sign+POST`)
  add("  min–max over repeats", (s) => `${cell(s.deliveriesPerSecRange[0])}–${cell(s.deliveriesPerSecRange[1])}`)
  add("  ours ÷ this (of the medians)", (s) => (s.system === "ours" ? "1" : `${cell(ratio(ours?.deliveriesPerSec, s.deliveriesPerSec))}×`))
  add("  ours ÷ this, repeat by repeat: median (min–max)", (s) => {
    if (s.system === "ours") return "1"
    const r = pairedVs(results, s.system)
    return r === null ? "–" : `${cell(r.median)}× (${cell(r.min)}–${cell(r.max)})`
  })
  add("worker CPU ms/delivery", (s) => cell(s.workerCpuMsPerDelivery, 3), ceilings.signPostClientCpuMs === null ? "" : `${cell(ceilings.signPostClientCpuMs, 3)} sign+POST`)
  add("PostgreSQL CPU ms/delivery", (s) => cell(s.pgCpuMsPerDelivery, 3), ceilings.sqlPgCpuMsPerRow === null ? "" : `${cell(ceilings.sqlPgCpuMsPerRow, 3)} bare SQL`)
  add("  of which the db's backends", (s) => cell(s.pgBackendCpuMsPerDelivery, 3))
  add("receiver CPU ms/delivery", (s) => cell(s.receiverCpuMsPerDelivery, 3), ceilings.signPostReceiverCpuMs === null ? "" : cell(ceilings.signPostReceiverCpuMs, 3))
  add("peak RSS of the worker, MB", (s) => cell(s.peakRssMb, 0))
  add("SQL statements/delivery (client)", (s) => cell(s.statementsPerDelivery, 3))
  add("server transactions/delivery", (s) => cell(s.transactionsPerDelivery, 3))
  add("WAL bytes/delivery (whole server)", (s) => cell(s.walBytesPerDelivery, 0))
  add("other load on the machine, % of a core", (s) => cell(s.otherCpuPctOfCore, 0))
  add("start-up → first delivery, ms", (s) => cell(s.startupMs, 0))
  for (const rate of options.rates) {
    add(`${rate}/s enqueue→receive p50 / p90 / p99 ms`, (s) => {
      const l = s.latency.find((x) => x.rate === rate)
      return l === undefined || l.endToEndP50 === null ? "–" : `${cell(l.endToEndP50, 1)} / ${cell(l.endToEndP90, 1)} / ${cell(l.endToEndP99, 1)}`
    })
    add(`  ${rate}/s commit→receive p50 / p99 ms`, (s) => {
      const l = s.latency.find((x) => x.rate === rate)
      return l === undefined || l.commitToReceiveP50 === null ? "–" : `${cell(l.commitToReceiveP50, 1)} / ${cell(l.commitToReceiveP99, 1)}`
    })
    add(`  ${rate}/s enqueue call p50 ms`, (s) => cell(s.latency.find((x) => x.rate === rate)?.enqueueCallP50, 1))
    add(`  ${rate}/s kept up, producer + worker (repeats)`, (s) => s.latency.find((x) => x.rate === rate)?.keptUp ?? "–")
    add(`  ${rate}/s worker kept up (repeats)`, (s) => s.latency.find((x) => x.rate === rate)?.workerKeptUp ?? "–")
  }
  add("duplicates / bad signatures", (s) => `${s.duplicates} / ${s.signaturesFailed} of ${s.signaturesChecked}`)
  if (ceilings.sqlRowsPerSec !== null) rows.push(["bare batched claim+complete SQL, rows/s", ...summaries.map(() => ""), cell(ceilings.sqlRowsPerSec)])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`
  const out = [line(header), `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : "-".repeat(w + 1) + ":")).join("|")}|`, ...rows.map(line)]
  out.push("", "| target | measured | |", "|---|---|---|")
  for (const t of targets(summaries, results)) out.push(`| ${t.target} | ${t.measured} | ${t.pass === null ? "–" : t.pass ? "✅" : "❌"} |`)
  if (results.scale !== undefined && results.scale.points.length > 0) {
    out.push("", "| claim (batch " + results.scale.batch + ") | delivered rows | due rows | client p50 / p99 ms | server ms (EXPLAIN ANALYZE) | buffers | partial index |", "|---|---:|---:|---:|---:|---:|---|")
    for (const p of results.scale.points) {
      out.push(`| | ${p.delivered.toLocaleString("en-US")} | ${p.due.toLocaleString("en-US")} | ${cell(p.clientMs.p50)} / ${cell(p.clientMs.p99)} | ${cell(p.serverMs, 3)} | ${p.sharedBuffers ?? "–"} | ${p.usesDueIndex ? "yes" : "no"} |`)
    }
  }
  if (results.components.length > 0) {
    out.push("", "| our worker without the database | CPU ms/delivery | deliveries/s | what runs |", "|---|---:|---:|---|")
    for (const c of results.components) out.push(`| ${c.name} | ${cell(c.cpuMsPerDelivery, 3)} | ${cell(c.perSec)} | ${c.description} |`)
  }
  return out.join("\n")
}

