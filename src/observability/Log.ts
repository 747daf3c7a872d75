import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as FiberRefs from "effect/FiberRefs"
import * as HashMap from "effect/HashMap"
import * as HashSet from "effect/HashSet"
import * as Inspectable from "effect/Inspectable"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"
import { fstatSync } from "node:fs"
import type { LogFormat, LogLevelName } from "../config/AppConfig.js"
import { isoTimeFormatter } from "../lib/IsoTime.js"

const RANK: Record<LogLevelName, number> = { DEBUG: 10, INFO: 20, WARN: 30, ERROR: 40 }

const levelName = (level: LogLevel.LogLevel): LogLevelName => {
  switch (level._tag) {
    case "All":
    case "Trace":
    case "Debug":
      return "DEBUG"
    case "Info":
      return "INFO"
    case "Warning":
      return "WARN"
    default:
      return "ERROR"
  }
}

/** The live log threshold. SIGHUP sets it; every fiber's logger reads it, so no restart is needed. */
export class LogThreshold {
  private rank: number
  constructor(level: LogLevelName) {
    this.rank = RANK[level]
  }
  set(level: LogLevelName) {
    this.rank = RANK[level]
  }
  allows(level: LogLevelName) {
    return RANK[level] >= this.rank
  }
}

export interface LogOutput {
  readonly write: (line: string) => void
  /**
   * Start each line with its syslog priority (`<4>` for WARN…): journald reads the prefix, stores
   * the line at that priority and strips it (SyslogLevelPrefix=), so `journalctl -p warning`
   * finds warnings and errors, and `-o cat` still shows the plain line.
   */
  readonly syslogPriorities?: boolean
}

/**
 * Whether a file descriptor is connected to the journal: systemd sets JOURNAL_STREAM to the
 * device and inode of the stream it gives a service (sd_journal_stream_fd(3)); a descriptor
 * redirected elsewhere (a pipe to another program) no longer matches.
 */
export const isJournalStream = (fd: number, env: Readonly<Record<string, string | undefined>> = process.env): boolean => {
  const stream = env.JOURNAL_STREAM
  if (stream === undefined || stream === "") return false
  try {
    const stat = fstatSync(fd, { bigint: true })
    return stream === `${stat.dev}:${stat.ino}`
  } catch {
    return false
  }
}

const SYSLOG_PRIORITY: Record<LogLevelName, string> = { DEBUG: "<7>", INFO: "<6>", WARN: "<4>", ERROR: "<3>" }

/**
 * Lines handed to `writeText` once per event-loop turn: a busy worker logs a line per attempt,
 * and one write of many lines costs a fraction of a write each. `flush` writes what waits now.
 */
export const batchedOutput = (writeText: (text: string) => void): LogOutput & { readonly flush: () => void } => {
  let pending: Array<string> = []
  let scheduled = false
  const flush = () => {
    scheduled = false
    if (pending.length === 0) return
    const text = pending.join("")
    pending = []
    writeText(text)
  }
  return {
    write: (line) => {
      pending.push(line)
      if (!scheduled) {
        scheduled = true
        setImmediate(flush)
      }
    },
    flush
  }
}

/** Standard output, batched; flushed on exit. Under systemd, lines carry their priority. */
const stdout: LogOutput = (() => {
  const output = batchedOutput((text) => process.stdout.write(text))
  process.on("exit", output.flush)
  return { ...output, syslogPriorities: isJournalStream(1) }
})()

const messageParts = (message: unknown): ReadonlyArray<unknown> => (Array.isArray(message) ? message : [message])

const messageText = (parts: ReadonlyArray<unknown>): string =>
  parts.map((part) => (typeof part === "string" ? part : Inspectable.format(part))).join(" ")

const currentSpan = (refs: FiberRefs.FiberRefs): Option.Option<Tracer.AnySpan> =>
  Context.getOption(FiberRefs.getOrDefault(refs, FiberRef.currentContext), Tracer.ParentSpan)

/** Writes one line straight to our logger, skipping the Effect logging machinery (see `directLog`). */
export type DirectLog = (level: LogLevelName, message: string, fields: Readonly<Record<string, unknown>>) => void

const DIRECT = Symbol.for("webhook-worker/Log/direct")

interface WithDirect {
  readonly [DIRECT]: DirectLog
}

const hasDirect = <A>(logger: A): logger is A & WithDirect =>
  typeof logger === "object" && logger !== null && DIRECT in logger

/**
 * One JSON object per line (journald-friendly, flat: annotations become top-level fields), or a
 * readable line for terminals. Includes the trace and span ids when a span is active, and the
 * cause's message for failures (its stack only at DEBUG). `fields` go on every line (the
 * instance number, so lines of `webhook-worker@*` units can be told apart once merged).
 */
export const makeLogger = (
  format: LogFormat,
  threshold: LogThreshold,
  output: LogOutput = stdout,
  fields: Readonly<Record<string, string | number>> = {}
) => {
  const prefixOf = output.syslogPriorities === true ? (level: LogLevelName) => SYSLOG_PRIORITY[level] : () => ""
  const emit = (level: LogLevelName, record: Record<string, unknown>) => {
    if (format === "json") {
      output.write(prefixOf(level) + jsonText(record) + "\n")
    } else {
      const { msg, time, ...extra } = record
      delete extra.level
      const rest = Object.entries(extra).map(([key, value]) => `${key}=${typeof value === "string" ? value : jsonText(value)}`)
      output.write(`${prefixOf(level)}${String(time)} ${level.padEnd(5)} ${String(msg)}${rest.length > 0 ? " " + rest.join(" ") : ""}\n`)
    }
  }
  const timeText = isoTimeFormatter()
  const logger = Logger.make(({ annotations, cause, context, date, logLevel, message }) => {
    const level = levelName(logLevel)
    if (!threshold.allows(level)) return
    const parts = messageParts(message)
    const record: Record<string, unknown> = { time: timeText(date.getTime()), level, msg: messageText(parts), ...fields }
    for (const [key, value] of HashMap.toEntries(annotations)) record[key] = value
    const span = currentSpan(context)
    if (Option.isSome(span)) {
      record.trace_id = span.value.traceId
      record.span_id = span.value.spanId
    }
    if (!Cause.isEmpty(cause)) {
      record.error = threshold.allows("DEBUG") ? Cause.pretty(cause) : causeMessage(cause)
    }
    emit(level, record)
  })
  const ownKeys = ["time", "level", "msg", ...Object.keys(fields)]
  const fieldsText = Object.keys(fields).length === 0 ? "" : "," + JSON.stringify(fields).slice(1, -1)
  // The line `emit` would write for the merged record, as text: the per-attempt line is written
  // once per delivery, and building the record cost two object spreads. False when it cannot
  // be (a field that overrides the logger's own, a value JSON.stringify refuses): `emit` then.
  const writeJsonDirectly = (level: LogLevelName, message: string, lineFields: Readonly<Record<string, unknown>>): boolean => {
    for (const key of ownKeys) if (Object.hasOwn(lineFields, key)) return false
    let lineText: string
    try {
      lineText = JSON.stringify(lineFields)
    } catch {
      return false
    }
    const rest = lineText.length > 2 ? "," + lineText.slice(1) : "}"
    output.write(`${prefixOf(level)}{"time":"${timeText(Date.now())}","level":"${level}","msg":${JSON.stringify(message)}${fieldsText}${rest}\n`)
    return true
  }
  const direct: DirectLog = (level, message, lineFields) => {
    if (!threshold.allows(level)) return
    if (format === "json" && writeJsonDirectly(level, message, lineFields)) return
    emit(level, { time: timeText(Date.now()), level, msg: message, ...fields, ...lineFields })
  }
  return Object.assign(logger, { [DIRECT]: direct })
}

/**
 * The direct writer of our logger when it is the only logger of the running fiber (Effect's own
 * tracer logger aside) and INFO lines pass: a line per delivery attempt is then written without
 * a fiber, a log event or an annotation map. Under any other logger (a host application's) it is
 * none, and callers log through Effect as usual.
 */
export const directLog: Effect.Effect<Option.Option<DirectLog>> = Effect.gen(function*() {
  const loggers = HashSet.toValues(yield* FiberRef.get(FiberRef.currentLoggers))
  const minimum = yield* FiberRef.get(FiberRef.currentMinimumLogLevel)
  if (LogLevel.greaterThan(minimum, LogLevel.Info)) return Option.none()
  const ours = loggers.filter(hasDirect)
  const others = loggers.filter((logger) => !hasDirect(logger) && logger !== Logger.tracerLogger)
  return ours.length === 1 && others.length === 0 ? Option.some(ours[0]![DIRECT]) : Option.none()
})

// Writing a log line must never throw: bigints become strings, and an object met a second time
// (a cycle) is written as "[Circular]".
const jsonText = (value: unknown): string => {
  try {
    return JSON.stringify(value)
  } catch {
    return safeJsonText(value)
  }
}

const safeJsonText = (value: unknown): string => {
  const seen = new WeakSet<object>()
  return JSON.stringify(value, (_key, inner: unknown) => {
    if (typeof inner === "bigint") return inner.toString()
    if (typeof inner === "object" && inner !== null) {
      if (seen.has(inner)) return "[Circular]"
      seen.add(inner)
    }
    return inner
  })
}

/** The first failure's message, one line, without a stack. */
export const causeMessage = (cause: Cause.Cause<unknown>): string => {
  const failure = Option.orElse(Cause.failureOption(cause), () => Cause.dieOption(cause))
  return Option.match(failure, {
    onNone: () => (Cause.isInterruptedOnly(cause) ? "interrupted" : "unknown failure"),
    onSome: (error) =>
      error instanceof Error ? error.message : typeof error === "object" && error !== null && "message" in error ? String(error.message) : String(error)
  })
}

/**
 * Replaces the default logger; all levels reach it and `threshold` decides (so SIGHUP can change
 * it). Composed in sequence, not with `Layer.mergeAll`: merged layers are built on parallel fibers
 * and (effect 3.22) their FiberRef changes then outlive the layer's scope, so a second logger
 * provided later would print alongside the first.
 */
export const layer = (
  format: LogFormat,
  threshold: LogThreshold,
  output?: LogOutput,
  fields?: Readonly<Record<string, string | number>>
) =>
  Logger.replace(Logger.defaultLogger, makeLogger(format, threshold, output, fields)).pipe(
    Layer.provideMerge(Logger.minimumLogLevel(LogLevel.All))
  )
