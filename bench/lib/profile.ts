/**
 * Summarises a V8 CPU profile (`node --cpu-prof`) over a window: self time by function and by
 * code area (a package in node_modules, a file of ours, Node internals, GC), idle excluded.
 */
import { readFileSync } from "node:fs"

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
}

interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: ReadonlyArray<number>
}

interface CpuProfile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly startTime: number
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

export interface ProfileEntry {
  readonly name: string
  readonly ms: number
  readonly pct: number
}

export interface ProfileSummary {
  /** Whether the samples could be restricted to the measured window (else: the whole life). */
  readonly windowed: boolean
  readonly busyMs: number
  readonly byArea: ReadonlyArray<ProfileEntry>
  readonly byFunction: ReadonlyArray<ProfileEntry>
  /**
   * Inclusive time of our own functions (dist/ or src/ of this project): the sample's whole
   * synchronous call stack below them. Work an Effect schedules runs later from the fiber
   * runtime and is not included, so this is exact for synchronous helpers (the logger, signing,
   * body building) and a lower bound elsewhere.
   */
  readonly oursInclusive: ReadonlyArray<ProfileEntry>
}

const area = (url: string, functionName: string): string => {
  if (url === "") {
    if (functionName === "(garbage collector)") return "GC"
    if (functionName === "(program)") return "(program: native, not attributed)"
    return functionName === "" ? "(native)" : functionName
  }
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (modules !== null) return modules[1]!
  if (url.startsWith("node:")) return "node internals"
  const ours = /\/(dist|src|bench)\/(.+?)(\.js|\.ts)?$/.exec(url)
  if (ours !== null) return `${ours[1]}/${ours[2]}`
  return url
}

/** `fromUs`/`toUs` are monotonic microseconds (process.hrtime), the clock V8 stamps samples with. */
export const summariseProfile = (file: string, fromUs: number, toUs: number, top = 25): ProfileSummary | undefined => {
  let profile: CpuProfile
  try {
    profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile
  } catch {
    return undefined
  }
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]))
  const parents = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id)
  const isOurs = (url: string) => /\/(dist|src)\//.test(url) && !url.includes("node_modules")
  const tally = (windowed: boolean) => {
    const byArea = new Map<string, number>()
    const byFunction = new Map<string, number>()
    const inclusive = new Map<string, number>()
    let busy = 0
    let t = profile.startTime
    for (let i = 0; i < profile.samples.length; i++) {
      const delta = profile.timeDeltas[i] ?? 0
      t += delta
      if (windowed && (t < fromUs || t > toUs)) continue
      const frame = frames.get(profile.samples[i]!)
      if (frame === undefined || frame.functionName === "(idle)") continue
      const ms = delta / 1000
      busy += ms
      const where = area(frame.url, frame.functionName)
      byArea.set(where, (byArea.get(where) ?? 0) + ms)
      const file = frame.url.replace(/^.*\/(node_modules|dist|src)\//, "$1/")
      const fn = `${frame.functionName || "(anonymous)"} ${file ? `${file}:${frame.lineNumber + 1}` : ""}`.trim()
      byFunction.set(fn, (byFunction.get(fn) ?? 0) + ms)
      const seen = new Set<string>()
      for (let id: number | undefined = profile.samples[i]; id !== undefined; id = parents.get(id)) {
        const f = frames.get(id)
        if (f === undefined || !isOurs(f.url)) continue
        const name = `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*\/(dist|src)\//, "$1/")}:${f.lineNumber + 1}`
        if (seen.has(name)) continue
        seen.add(name)
        inclusive.set(name, (inclusive.get(name) ?? 0) + ms)
      }
    }
    return { busy, byArea, byFunction, inclusive }
  }
  let windowed = true
  let result = tally(true)
  if (result.busy === 0) {
    windowed = false
    result = tally(false)
  }
  const entries = (map: Map<string, number>) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, ms]) => ({ name, ms: Math.round(ms * 10) / 10, pct: Math.round((1000 * ms) / Math.max(result.busy, 1e-9)) / 10 }))
  return {
    windowed,
    busyMs: Math.round(result.busy),
    byArea: entries(result.byArea),
    byFunction: entries(result.byFunction),
    oursInclusive: entries(result.inclusive)
  }
}
