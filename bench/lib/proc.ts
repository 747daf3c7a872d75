/**
 * CPU and memory from /proc (Linux): per process, for the PostgreSQL processes that serve one
 * database, and for the whole machine (to show how much of it other tenants used meanwhile).
 */
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"

const TICK_MS = (() => {
  try {
    return 1000 / Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim())
  } catch {
    return 10
  }
})()

interface Stat {
  readonly comm: string
  readonly ppid: number
  readonly cpuMs: number
}

const readStat = (pid: number): Stat | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "latin1")
    const close = text.lastIndexOf(")")
    const rest = text.slice(close + 2).split(" ")
    return {
      comm: text.slice(text.indexOf("(") + 1, close),
      ppid: Number(rest[1]),
      // utime and stime (fields 14 and 15) cover every thread of the process.
      cpuMs: (Number(rest[11]) + Number(rest[12])) * TICK_MS
    }
  } catch {
    return undefined
  }
}

/** User + system CPU of a process so far, in ms (undefined once it is gone). */
export const cpuMsOf = (pid: number): number | undefined => readStat(pid)?.cpuMs

/** Resident memory now and at its peak (VmRSS, VmHWM), in MB. */
export const memoryOf = (pid: number): { readonly rssMb: number; readonly peakRssMb: number } | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/status`, "latin1")
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? "0")
    return { rssMb: kb("VmRSS") / 1024, peakRssMb: kb("VmHWM") / 1024 }
  } catch {
    return undefined
  }
}

/** Busy and total CPU time of the machine so far (all cores), in ms. */
export const machineCpu = (): { readonly busyMs: number; readonly totalMs: number } => {
  const line = readFileSync("/proc/stat", "latin1").split("\n", 1)[0] ?? ""
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number)
  const busy = user + nice + system + irq + softirq + steal
  return { busyMs: busy * TICK_MS, totalMs: (busy + idle + iowait) * TICK_MS }
}

const pids = (): Array<number> =>
  readdirSync("/proc").flatMap((name) => (/^\d+$/.test(name) ? [Number(name)] : []))

const cmdline = (pid: number): string => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1").replace(/\0/g, " ").trim()
  } catch {
    return ""
  }
}

const AUXILIARY = /checkpointer|background writer|walwriter|autovacuum launcher/

/**
 * The CPU PostgreSQL spends for one database over a window: its backends (and autovacuum or
 * parallel workers naming it), plus the shared auxiliary processes (WAL writer, checkpointer,
 * background writer), which other databases on the server also use. `exclude` removes the
 * harness's own connections. Call `poll` every ~100 ms so backends that exit mid-window still
 * count up to their last sample.
 */
export class PostgresCpu {
  private readonly start = new Map<number, number>()
  private readonly last = new Map<number, number>()
  private readonly auxiliary = new Set<number>()
  private readonly kind = new Map<number, "backend" | "auxiliary" | "other">()

  constructor(private readonly database: string, private readonly exclude: ReadonlySet<number> = new Set()) {}

  private scan(): Map<number, number> {
    const stats = new Map<number, Stat>()
    for (const pid of pids()) {
      const stat = readStat(pid)
      if (stat?.comm === "postgres") stats.set(pid, stat)
    }
    const found = new Map<number, number>()
    for (const [pid, stat] of stats) {
      if (!stats.has(stat.ppid) || this.exclude.has(pid)) continue
      let kind = this.kind.get(pid)
      if (kind === undefined) {
        const line = cmdline(pid)
        kind = line.includes(` ${this.database} `) || line.endsWith(` ${this.database}`)
          ? "backend"
          : AUXILIARY.test(line)
          ? "auxiliary"
          : "other"
        this.kind.set(pid, kind)
      }
      if (kind === "other") continue
      if (kind === "auxiliary") this.auxiliary.add(pid)
      found.set(pid, stat.cpuMs)
    }
    return found
  }

  /** Starts the window: CPU used so far by existing processes does not count. */
  begin(): void {
    this.start.clear()
    this.last.clear()
    for (const [pid, cpu] of this.scan()) {
      this.start.set(pid, cpu)
      this.last.set(pid, cpu)
    }
  }

  poll(): void {
    for (const [pid, cpu] of this.scan()) {
      if (!this.start.has(pid)) this.start.set(pid, 0)
      this.last.set(pid, cpu)
    }
  }

  /** CPU ms since `begin`: the database's backends, and the shared auxiliary processes. */
  end(): { readonly backendsMs: number; readonly auxiliaryMs: number; readonly backends: number } {
    this.poll()
    let backendsMs = 0
    let auxiliaryMs = 0
    let backends = 0
    for (const [pid, cpu] of this.last) {
      const used = cpu - (this.start.get(pid) ?? 0)
      if (this.auxiliary.has(pid)) auxiliaryMs += used
      else {
        backendsMs += used
        backends++
      }
    }
    return { backendsMs, auxiliaryMs, backends }
  }
}
