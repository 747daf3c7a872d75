/**
 * Child processes: the receiver, the peers, the probe and the ceiling loop are written in
 * TypeScript and transpiled once per run into bench/.build (plain `node`, no loader in the
 * measured processes), then spawned with their output going to a log file.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"
import { type ReceiverCommand, type ReceiverEvent, type ReceiverStats } from "./common.js"
import { sleep } from "./db.js"

export const benchDir = fileURLToPath(new URL("..", import.meta.url))
export const projectRoot = join(benchDir, "..")
export const buildDir = join(benchDir, ".build")

/** Transpiles lib/common.ts and child/*.ts into bench/.build (no type check: `tsc` does that). */
export const buildChildren = (): void => {
  const sources = ["lib/common.ts", ...readdirSync(join(benchDir, "child")).filter((f) => f.endsWith(".ts")).map((f) => `child/${f}`)]
  for (const source of sources) {
    const output = ts.transpileModule(readFileSync(join(benchDir, source), "utf8"), {
      fileName: source,
      compilerOptions: {
        module: ts.ModuleKind.ES2022,
        target: ts.ScriptTarget.ES2022,
        verbatimModuleSyntax: true,
        sourceMap: false
      }
    })
    const target = join(buildDir, source.replace(/\.ts$/, ".js"))
    mkdirSync(dirname(target), { recursive: true })
    writeFileSync(target, output.outputText)
  }
}

export const builtChild = (name: string): string => join(buildDir, "child", `${name}.js`)

export interface SpawnOptions {
  readonly env: Record<string, string>
  readonly logFile: string
  readonly ipc: boolean
  readonly nodeArgs?: ReadonlyArray<string>
}

const live = new Set<Child>()

/** Kills every child still running (the orchestrator is being interrupted). */
export const killAll = (): void => {
  for (const child of live) child.process.kill("SIGKILL")
}

/** A spawned process with its exit awaited and a bounded stop. */
export class Child {
  readonly exited: Promise<number | null>
  exitCode: number | null | undefined = undefined
  /** The signal that ended the process, if one did. */
  exitSignal: NodeJS.Signals | null = null

  constructor(readonly process: ChildProcess, readonly logFile: string) {
    live.add(this)
    this.exited = new Promise((resolve) => {
      process.once("exit", (code, signal) => {
        live.delete(this)
        this.exitSignal = signal
        this.exitCode = code ?? (signal === null ? null : -1)
        resolve(this.exitCode)
      })
    })
  }

  get pid(): number {
    return this.process.pid ?? 0
  }

  get running(): boolean {
    return this.exitCode === undefined
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 15_000): Promise<number | null> {
    if (!this.running) return this.exitCode ?? null
    this.process.kill("SIGTERM")
    const timer = setTimeout(() => this.process.kill("SIGKILL"), graceMs)
    const code = await this.exited
    clearTimeout(timer)
    return code
  }

  /** The last lines of the process's log, for error messages. */
  tail(lines = 15): string {
    try {
      return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n")
    } catch {
      return ""
    }
  }
}

export const spawnNode = (script: string, args: ReadonlyArray<string>, options: SpawnOptions): Child => {
  const fd = openSync(options.logFile, "a")
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), script, ...args], {
    cwd: projectRoot,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", ...options.env },
    stdio: options.ipc ? ["ignore", fd, fd, "ipc"] : ["ignore", fd, fd]
  })
  closeSync(fd)
  return new Child(child, options.logFile)
}

/** Waits for `check` to hold, polling every `everyMs`; false on timeout. */
export const waitFor = async (check: () => boolean | Promise<boolean>, timeoutMs: number, everyMs = 20): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(everyMs)
  }
  return check()
}

/** The receiver process and its IPC commands. */
export class Receiver {
  private nextId = 0
  private readonly pending = new Map<number, (result: unknown) => void>()
  private readonly listeners = new Set<(event: ReceiverEvent) => void>()

  private constructor(readonly child: Child, readonly port: number) {
    child.process.on("message", (message: { readonly id?: number; readonly result?: unknown } & Partial<ReceiverEvent>) => {
      if (message.id !== undefined) {
        this.pending.get(message.id)?.(message.result)
        this.pending.delete(message.id)
      } else if (message.event !== undefined) {
        for (const listener of this.listeners) listener(message as ReceiverEvent)
      }
    })
  }

  static async start(logFile: string): Promise<Receiver> {
    const child = spawnNode(builtChild("receiver"), [], { env: {}, logFile, ipc: true })
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`receiver did not start:\n${child.tail()}`)), 10_000)
      child.process.on("message", (message: Partial<ReceiverEvent>) => {
        if (message.event === "listening" && message.port !== undefined) {
          clearTimeout(timer)
          resolve(message.port)
        }
      })
    })
    return new Receiver(child, port)
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/hook`
  }

  private request<A>(command: ReceiverCommand): Promise<A> {
    const id = ++this.nextId
    return new Promise<A>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`receiver did not answer ${command.cmd}`)), 10_000)
      this.pending.set(id, (result) => {
        clearTimeout(timer)
        resolve(result as A)
      })
      this.child.process.send({ ...command, id })
    })
  }

  reset(target: number, options: { readonly recordSeqs?: number; readonly delayMs?: number } = {}): Promise<ReceiverStats> {
    return this.request({ cmd: "reset", target, recordSeqs: options.recordSeqs ?? 0, delayMs: options.delayMs ?? 0 })
  }

  stats(): Promise<ReceiverStats> {
    return this.request({ cmd: "stats" })
  }

  seqTimes(): Promise<ReadonlyArray<number>> {
    return this.request({ cmd: "seqTimes" })
  }

  /** Resolves with the time of the next `first` / `reached` event. */
  next(event: ReceiverEvent["event"]): { readonly promise: Promise<number>; readonly cancel: () => void } {
    let listener: (e: ReceiverEvent) => void = () => undefined
    const promise = new Promise<number>((resolve) => {
      listener = (e) => {
        if (e.event === event && "at" in e) {
          this.listeners.delete(listener)
          resolve(e.at)
        }
      }
      this.listeners.add(listener)
    })
    return { promise, cancel: () => this.listeners.delete(listener) }
  }

  async stop(): Promise<void> {
    this.child.process.disconnect()
    await this.child.stop(3_000)
  }
}

/** Relative path for messages. */
export const shortPath = (path: string): string => relative(process.cwd(), path) || path
