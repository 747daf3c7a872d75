/**
 * `npm run bench`: our worker side by side with graphile-worker and pg-boss on this machine, plus
 * the machine's ceilings, the claim's scaling and the worker's memory. See bench/README.md.
 */
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { cpus, release, tmpdir, totalmem } from "node:os"
import { dirname, isAbsolute, join } from "node:path"
import { parse, usage } from "./lib/args.js"
import { type BurnResult, burnDown } from "./lib/burn.js"
import { type ComponentResult, components } from "./lib/components.js"
import { type PostCeiling, postCeiling, type SqlCeiling, sqlCeiling } from "./lib/ceilings.js"
import { buildChildren, killAll, projectRoot, Receiver } from "./lib/children.js"
import type { Context } from "./lib/context.js"
import { Admin } from "./lib/db.js"
import { latency, type LatencyResult } from "./lib/latency.js"
import { type ProfileSummary } from "./lib/profile.js"
import { ceilingsOf, type Results, summarise, table, targets } from "./lib/report.js"
import { rss, type RssResult } from "./lib/rss.js"
import { scale, type ScaleResult } from "./lib/scale.js"
import { cell } from "./lib/stats.js"

const log = (line: string) => process.stdout.write(line + "\n")

/** Newest modification time under a directory. */
const newest = (dir: string): number =>
  readdirSync(dir, { withFileTypes: true }).reduce((latest, entry) => {
    const path = join(dir, entry.name)
    return Math.max(latest, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs)
  }, 0)

/** Our worker runs from dist/ (the built CLI): rebuild it when src/ is newer. */
const ensureBuilt = (build: boolean) => {
  const main = join(projectRoot, "dist", "main.js")
  let built = 0
  try {
    built = statSync(main).mtimeMs
  } catch {
    built = 0
  }
  if (built >= newest(join(projectRoot, "src"))) return
  if (!build) {
    log("warning: dist/ is older than src/ (--no-build given): benchmarking the existing build")
    return
  }
  log("src/ is newer than dist/: npm run build")
  const result = spawnSync("npm", ["run", "build"], { cwd: projectRoot, stdio: "inherit" })
  if (result.status !== 0) throw new Error("npm run build failed; fix the build or pass --no-build to benchmark the existing dist/")
}

const burnLine = (r: BurnResult) =>
  r.ok
    ? `${cell(r.deliveriesPerSec)}/s, worker ${cell(r.workerCpuMsPerDelivery, 3)} ms, PG ${cell(r.pgCpuMsPerDelivery, 3)} ms/delivery, ` +
      `RSS ${cell(r.peakRssMb, 0)} MB, ${cell(r.statementsPerDelivery, 3)} stmts/delivery, other load ${cell(r.otherCpuPctOfCore, 0)} % of a core`
    : `FAILED: ${r.error}`

const latencyLine = (r: LatencyResult) =>
  r.ok
    ? r.rates.map((x) => `${x.rate}/s p50/p99 ${cell(x.endToEnd.p50, 1)}/${cell(x.endToEnd.p99, 1)} ms${x.keptUp ? "" : " (fell behind)"}`).join("; ")
    : `FAILED: ${r.error}`

const printProfile = (profile: ProfileSummary) => {
  log(`\nCPU profile of our worker during the burn-down (${profile.windowed ? "measured window" : "whole process life"}, ${profile.busyMs} ms busy):`)
  log("  by area:")
  for (const e of profile.byArea.slice(0, 15)) log(`    ${e.pct.toFixed(1).padStart(5)} %  ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}`)
  log("  by function (self time):")
  for (const e of profile.byFunction.slice(0, 25)) log(`    ${e.pct.toFixed(1).padStart(5)} %  ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}`)
  log("  our functions, inclusive of their synchronous callees:")
  for (const e of profile.oursInclusive.slice(0, 20)) log(`    ${e.pct.toFixed(1).padStart(5)} %  ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}`)
}

const main = async () => {
  let parsed: ReturnType<typeof parse>
  try {
    parsed = parse(process.argv.slice(2))
  } catch (error) {
    process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n\n${usage}`)
    process.exitCode = 2
    return
  }
  if (parsed === "help") {
    log(usage)
    return
  }
  const options = parsed
  ensureBuilt(options.build)
  buildChildren()
  const logDir = mkdtempSync(join(tmpdir(), "wwbench-"))
  const admin = await Admin.connect()
  let receiver: Receiver | undefined
  let interrupted = false
  const cleanUp = async () => {
    killAll()
    await admin.close().catch(() => undefined)
  }
  process.once("SIGINT", () => {
    interrupted = true
    log("\ninterrupted: stopping children and dropping the benchmark databases")
    void cleanUp().finally(() => {
      if (!options.keepLogs) rmSync(logDir, { recursive: true, force: true })
      process.exit(130)
    })
  })
  try {
    receiver = await Receiver.start(join(logDir, "receiver.log"))
    const ctx: Context = { options, admin, receiver, logDir, log }
    const pgVersion = await admin.serverVersion()
    const pgSettings = await admin.settings(["shared_buffers", "synchronous_commit", "fsync", "autovacuum", "max_connections", "wal_level"])
    const machine = `${cpus()[0]?.model ?? "?"} × ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Linux ${release()}`
    log(`webhook-worker benchmark: ${new Date().toISOString()}`)
    log(`machine: ${machine}; Node ${process.version}; PostgreSQL ${pgVersion} (${Object.entries(pgSettings).map(([k, v]) => `${k}=${v}`).join(", ")})`)
    log(`systems: ${options.systems.join(", ")}; phases: ${options.phases.join(", ")}; N=${options.n}, C=${options.concurrency}, repeats=${options.repeats}` +
      `${options.batchSize === undefined ? "" : `, WORKER_BATCH_SIZE=${options.batchSize}`}; destination=${options.destination}${options.quick ? " (--quick)" : ""}`)
    log(`logs: ${logDir}\n`)

    const burn: Array<BurnResult> = []
    const lat: Array<LatencyResult> = []
    const posts: Array<PostCeiling> = []
    const sqls: Array<SqlCeiling> = []
    let scaleResult: ScaleResult | undefined
    let rssResult: RssResult | undefined
    let componentResults: ReadonlyArray<ComponentResult> = []
    const has = (phase: (typeof options.phases)[number]) => options.phases.includes(phase)

    if (has("burn") || has("ceilings")) {
      for (let repeat = 1; repeat <= options.repeats && !interrupted; repeat++) {
        if (has("ceilings")) {
          const c = await postCeiling(ctx, repeat)
          posts.push(c)
          log(`r${repeat} ceiling sign+POST: ${c.ok ? `${cell(c.requestsPerSec)}/s, client ${cell(c.clientCpuMsPerRequest, 3)} ms/request` : `FAILED: ${c.error}`}`)
        }
        if (has("burn")) {
          for (const system of options.systems) {
            if (interrupted) break
            const r = await burnDown(ctx, system, repeat)
            burn.push(r)
            log(`r${repeat} burn-down ${system}: ${burnLine(r)}`)
          }
        }
        if (has("ceilings")) {
          const c = await sqlCeiling(ctx, repeat)
          sqls.push(c)
          log(`r${repeat} ceiling SQL claim+complete (${c.loops} × batch ${c.batch}): ${c.ok ? `${cell(c.rowsPerSec)} rows/s, PG ${cell(c.pgCpuMsPerRow, 3)} ms/row` : `FAILED: ${c.error}`}`)
        }
      }
    }
    if (has("latency")) {
      for (let repeat = 1; repeat <= options.repeats && !interrupted; repeat++) {
        for (const system of options.systems) {
          if (interrupted) break
          const r = await latency(ctx, system, repeat)
          lat.push(r)
          log(`r${repeat} latency ${system}: ${latencyLine(r)}`)
        }
      }
    }
    if (has("scale") && !interrupted) {
      scaleResult = await scale(ctx)
      if (!scaleResult.ok) log(`scale FAILED: ${scaleResult.error}`)
    }
    if (has("rss") && !interrupted) {
      rssResult = await rss(ctx)
      log(rssResult.ok
        ? `rss: peak ${cell(rssResult.peakRssMb, 0)} MB with ${rssResult.maxInFlightAtReceiver} in flight (${rssResult.dueRows} due, ${rssResult.delivered} delivered in ${rssResult.seconds} s)`
        : `rss FAILED: ${rssResult.error}`)
    }

    if (has("components") && !interrupted) componentResults = await components(ctx)

    const results: Results = { burn, latency: lat, postCeiling: posts, sqlCeiling: sqls, scale: scaleResult, rss: rssResult, components: componentResults }
    const summaries = summarise(options, results)
    const profiles = burn.flatMap((r) => (r.profile === undefined ? [] : [r.profile]))
    if (profiles[0] !== undefined) printProfile(profiles[0])
    log(`\n${options.quick || options.repeats < 3 ? "SHORT RUN (--quick or < 3 repeats): indicative only.\n" : ""}`)
    log(table(options, summaries, results))
    const out = isAbsolute(options.out) ? options.out : join(projectRoot, options.out)
    mkdirSync(dirname(out), { recursive: true })
    writeFileSync(out, JSON.stringify({
      date: new Date().toISOString(),
      machine,
      node: process.version,
      postgres: { version: pgVersion, settings: pgSettings },
      options,
      short: options.quick || options.repeats < 3,
      summaries,
      ceilings: ceilingsOf(results),
      targets: targets(summaries, results),
      results
    }, null, 2) + "\n")
    log(`\nwrote ${out}`)
  } finally {
    await receiver?.stop().catch(() => undefined)
    await cleanUp()
    if (options.keepLogs) log(`logs kept in ${logDir}`)
    else rmSync(logDir, { recursive: true, force: true })
  }
}

main().then(
  // Deadline timers left over from races (a burn-down's timeout, minutes long) would otherwise
  // keep the process alive long after the run is over.
  () => process.exit(),
  (error: unknown) => {
    process.stderr.write(`bench: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`)
    killAll()
    process.exit(1)
  }
)
