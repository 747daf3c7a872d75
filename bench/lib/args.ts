/**
 * Command-line flags of `npm run bench -- ...`. Every part is selectable and bounded; `--quick`
 * is a small preset for validating the harness on a busy machine.
 */
import { parseArgs } from "node:util"
import { type DestinationMode, SYSTEMS, type SystemName } from "./systems.js"

export const PHASES = ["burn", "latency", "ceilings", "scale", "rss", "components"] as const
export type Phase = (typeof PHASES)[number]

export interface BenchOptions {
  readonly systems: ReadonlyArray<SystemName>
  readonly phases: ReadonlyArray<Phase>
  readonly n: number
  readonly repeats: number
  readonly concurrency: number
  /** WORKER_BATCH_SIZE of `ours`; undefined = the concurrency. */
  readonly batchSize: number | undefined
  readonly destination: DestinationMode
  readonly rates: ReadonlyArray<number>
  readonly latencySeconds: number
  /** Seconds at the first rate before measuring, not counted (JIT, sockets, plans: every system warms up alike). */
  readonly latencyWarmupSeconds: number
  readonly burnTimeoutSeconds: number
  readonly sqlLoops: number
  readonly sqlBatch: number
  readonly scaleDelivered: ReadonlyArray<number>
  readonly scaleDue: ReadonlyArray<number>
  readonly scaleClaims: number
  readonly rssRows: number
  readonly rssInFlight: number
  readonly rssSeconds: number
  readonly rssDelayMs: number
  readonly quietWaitSeconds: number
  readonly cpuProfile: boolean
  /** NODE_OPTIONS for our worker process (experiments: --max-semi-space-size=…). */
  readonly workerNodeOptions: string | undefined
  /** More flags on our worker's node command line: V8 flags NODE_OPTIONS refuses (--trace-gc, --trace-deopt). */
  readonly workerNodeFlags: ReadonlyArray<string>
  readonly build: boolean
  readonly keepLogs: boolean
  readonly out: string
  readonly quick: boolean
}

export const usage = `Usage: npm run bench -- [flags]

  --quick                 small preset: N=2000, 1 repeat, 3 s latency phases, scale up to 100k,
                          RSS with 20k rows for 4 s, no quiet-machine wait
  --only LIST             systems: ${SYSTEMS.join(",")} (default: all)
  --phases LIST           phases: ${PHASES.join(",")} (default: all)
                          (components: our worker's CPU split by layer, no database; see README)
  --n N                   burn-down rows (default 20000)
  --repeats R             interleaved repeats, medians reported (default 3)
  --concurrency C         deliveries in flight, every system (default 50)
  --batch-size B          WORKER_BATCH_SIZE of "ours" (default: the concurrency; "ours-defaults" runs the product default, 10)
  --destination url|endpoint  our rows: per-row URL + secret (default), or one registered endpoint
  --rates LIST            latency phase enqueue rates per second (default 100,1000)
  --latency-seconds S     length of each latency phase (default 10)
  --latency-warmup S      seconds at the first rate before measuring, not counted (default 2; --quick 1)
  --burn-timeout S        give up on one burn-down after S seconds (default 180)
  --sql-loops K           connections of the bare claim+complete SQL ceiling (default 2)
  --sql-batch B           rows per claim in the SQL ceiling (default 100)
  --scale-delivered LIST  delivered rows in the table (default 10000,100000,1000000)
  --scale-due LIST        due rows (default 10000,100000)
  --scale-claims K        claims timed per scale point (default 200)
  --rss-rows N            due rows for the RSS phase (default 100000)
  --rss-inflight C        MAX_CONCURRENT_DELIVERIES for the RSS phase (default 100)
  --rss-seconds S         RSS phase length (default 10)
  --rss-delay-ms D        receiver holds each response D ms in the RSS phase (default 1000)
  --quiet-wait S          before each pass wait up to S s for the machine to be quiet (default 10)
  --worker-node-options S NODE_OPTIONS for our worker (e.g. "--max-semi-space-size=4")
  --worker-node-flags=S   more node flags for our worker, space-separated (e.g. --worker-node-flags="--trace-gc --trace-deopt", with --keep-logs)
  --cpu-prof              write a V8 CPU profile of our worker per burn-down and summarise it
  --no-build              do not rebuild dist/ when src/ is newer
  --keep-logs             keep worker and receiver logs (printed path)
  --out FILE              results JSON (default bench/results/latest.json)
  --help
`

const list = (raw: string) => raw.split(",").map((s) => s.trim()).filter((s) => s !== "")

const numbers = (name: string, raw: string): ReadonlyArray<number> =>
  list(raw).map((s) => {
    const value = Number(s.replace(/_/g, "").replace(/k$/i, "000").replace(/m$/i, "000000"))
    if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name}: "${s}" is not a positive number`)
    return value
  })

const positive = (name: string, raw: string | undefined, fallback: number, integer = true): number => {
  if (raw === undefined) return fallback
  const [value] = numbers(name, raw)
  if (value === undefined || (integer && !Number.isInteger(value))) throw new Error(`--${name}: expected a positive ${integer ? "integer" : "number"}`)
  return value
}

export const parse = (argv: ReadonlyArray<string>): BenchOptions | "help" => {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    allowPositionals: false,
    options: {
      quick: { type: "boolean" },
      only: { type: "string" },
      phases: { type: "string" },
      n: { type: "string" },
      repeats: { type: "string" },
      concurrency: { type: "string" },
      "batch-size": { type: "string" },
      destination: { type: "string" },
      rates: { type: "string" },
      "latency-seconds": { type: "string" },
      "latency-warmup": { type: "string" },
      "burn-timeout": { type: "string" },
      "sql-loops": { type: "string" },
      "sql-batch": { type: "string" },
      "scale-delivered": { type: "string" },
      "scale-due": { type: "string" },
      "scale-claims": { type: "string" },
      "rss-rows": { type: "string" },
      "rss-inflight": { type: "string" },
      "rss-seconds": { type: "string" },
      "rss-delay-ms": { type: "string" },
      "quiet-wait": { type: "string" },
      "cpu-prof": { type: "boolean" },
      "worker-node-options": { type: "string" },
      "worker-node-flags": { type: "string" },
      "no-build": { type: "boolean" },
      "keep-logs": { type: "boolean" },
      out: { type: "string" },
      help: { type: "boolean" }
    }
  })
  if (values.help === true) return "help"
  const quick = values.quick === true
  const systems = values.only === undefined ? [...SYSTEMS] : list(values.only)
  for (const system of systems) {
    if (!(SYSTEMS as ReadonlyArray<string>).includes(system)) throw new Error(`--only: unknown system "${system}" (${SYSTEMS.join(", ")})`)
  }
  const phases = values.phases === undefined ? [...PHASES] : list(values.phases)
  for (const phase of phases) {
    if (!(PHASES as ReadonlyArray<string>).includes(phase)) throw new Error(`--phases: unknown phase "${phase}" (${PHASES.join(", ")})`)
  }
  const destination = values.destination ?? "url"
  if (destination !== "url" && destination !== "endpoint") throw new Error(`--destination: expected url or endpoint`)
  return {
    quick,
    systems: systems as ReadonlyArray<SystemName>,
    phases: phases as ReadonlyArray<Phase>,
    n: positive("n", values.n, quick ? 2_000 : 20_000),
    repeats: positive("repeats", values.repeats, quick ? 1 : 3),
    concurrency: positive("concurrency", values.concurrency, 50),
    batchSize: values["batch-size"] === undefined ? undefined : positive("batch-size", values["batch-size"], 10),
    destination,
    rates: values.rates === undefined ? [100, 1_000] : numbers("rates", values.rates),
    latencySeconds: positive("latency-seconds", values["latency-seconds"], quick ? 3 : 10, false),
    latencyWarmupSeconds: positive("latency-warmup", values["latency-warmup"], quick ? 1 : 2, false),
    burnTimeoutSeconds: positive("burn-timeout", values["burn-timeout"], quick ? 60 : 180, false),
    sqlLoops: positive("sql-loops", values["sql-loops"], 2),
    sqlBatch: positive("sql-batch", values["sql-batch"], 100),
    scaleDelivered: values["scale-delivered"] === undefined
      ? (quick ? [10_000, 100_000] : [10_000, 100_000, 1_000_000])
      : numbers("scale-delivered", values["scale-delivered"]),
    scaleDue: values["scale-due"] === undefined ? (quick ? [10_000] : [10_000, 100_000]) : numbers("scale-due", values["scale-due"]),
    scaleClaims: positive("scale-claims", values["scale-claims"], quick ? 50 : 200),
    rssRows: positive("rss-rows", values["rss-rows"], quick ? 20_000 : 100_000),
    rssInFlight: positive("rss-inflight", values["rss-inflight"], 100),
    rssSeconds: positive("rss-seconds", values["rss-seconds"], quick ? 4 : 10, false),
    rssDelayMs: positive("rss-delay-ms", values["rss-delay-ms"], 1_000),
    quietWaitSeconds: values["quiet-wait"] === undefined ? (quick ? 0 : 10) : Number(values["quiet-wait"]),
    cpuProfile: values["cpu-prof"] === true,
    workerNodeOptions: values["worker-node-options"],
    workerNodeFlags: (values["worker-node-flags"] ?? "").split(" ").filter((flag) => flag !== ""),
    build: values["no-build"] !== true,
    keepLogs: values["keep-logs"] === true,
    out: values.out ?? "bench/results/latest.json"
  }
}
