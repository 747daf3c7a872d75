import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { generateEncryptionKey } from "../crypto/Keyring.js"
import { migrate, readMigrations } from "../db/Migrator.js"
import { version } from "../PackageInfo.js"
import { type Destination, insertRows, toRow } from "../queue/Enqueue.js"
import { listDeadLetters, queueStats, retryAllDeadLetters, retryDeadLetters } from "../queue/Operations.js"
import { batchSize, envFile, json, keyringFrom, numberOption, settingsFrom, withDatabase } from "./Common.js"
import { CliEnvironment, note, say } from "./CliEnvironment.js"
import { CommandFailed, formatTable, makeProgress, printJson, printTable, UsageError } from "./Output.js"
import { dlqArchiveCommand, opsCommands } from "./OpsCommands.js"
import { receiveCommand } from "./ReceiveCommand.js"

// == migrate

const migrateCommand = Command.make("migrate", { envFile }, ({ envFile }) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(envFile)
    const applied = yield* withDatabase(settings, Effect.flatMap(readMigrations(), migrate))
    yield* say(applied.length === 0 ? "Database schema is up to date." : `Applied ${applied.join(", ")}.`)
  })).pipe(Command.withDescription("Apply migrations/*.sql in order, once each (safe to run twice, or from two hosts at once)"))

// == run

const instance = numberOption("instance", { integer: true, min: 1 }).pipe(
  Options.withDescription("Instance number (systemd %i): names the worker and offsets METRICS_PORT by N-1"),
  Options.withDefault(1)
)

// The worker's modules (HTTP client, metrics server, telemetry) load only for `run`: other
// commands start in a fraction of the time.
const runCommand = Command.make("run", { instance, envFile }, ({ envFile, instance }) =>
  Effect.flatMap(Effect.promise(() => import("./RunCommand.js")), (run) => run.runWorker(instance, envFile))).pipe(
  Command.withDescription("Run the worker until SIGTERM/SIGINT; SIGHUP re-reads the env file")
)

// == enqueue

const enqueueCommand = Command.make("enqueue", {
  url: Options.text("url").pipe(Options.withDescription("Destination URL (with --secret)"), Options.optional),
  secret: Options.text("secret").pipe(Options.withDescription("Signing secret: whsec_<base64> or any text"), Options.optional),
  endpoint: Options.text("endpoint").pipe(Options.withDescription("Registered endpoint id (instead of --url/--secret)"), Options.optional),
  eventType: Options.text("event-type").pipe(Options.withDescription("Event type, e.g. order.created")),
  payload: Options.text("payload").pipe(Options.withDescription("The event's data, as JSON")),
  userId: Options.text("user-id").pipe(Options.optional),
  idempotencyKey: Options.text("idempotency-key").pipe(
    Options.withDescription("At most one delivery per destination and key; a repeat prints the first id"),
    Options.optional
  ),
  maxAttempts: numberOption("max-attempts", { integer: true, min: 1 }).pipe(Options.withDescription("Default: WEBHOOK_MAX_ATTEMPTS"), Options.optional),
  delay: numberOption("delay", { integer: false, min: 0 }).pipe(Options.withDescription("Seconds to wait before the first attempt"), Options.optional),
  json,
  envFile
}, (args) =>
  Effect.gen(function*() {
    const destination: Destination = yield* Option.match(args.endpoint, {
      onSome: (endpointId) =>
        Option.isSome(args.url) || Option.isSome(args.secret)
          ? Effect.fail(new UsageError({ flag: "--endpoint", reason: "cannot be combined with --url or --secret" }))
          : Effect.succeed({ endpointId }),
      onNone: () =>
        Option.isNone(args.url)
          ? Effect.fail(new UsageError({ flag: "--url", reason: "is required (or give --endpoint)" }))
          : Option.isNone(args.secret)
          ? Effect.fail(new UsageError({ flag: "--secret", reason: "is required with --url" }))
          : Effect.succeed({ url: args.url.value, secret: args.secret.value })
    })
    let payload: unknown
    try {
      JSON.parse(args.payload)
      payload = { json: args.payload }
    } catch (error) {
      return yield* new UsageError({ flag: "--payload", reason: `not valid JSON: ${(error as Error).message}` })
    }
    const settings = yield* settingsFrom(args.envFile)
    // Only a URL's secret is stored (encrypted); an endpoint's secret is already in its row.
    const keyring = "url" in destination ? yield* keyringFrom(settings) : undefined
    const io = yield* CliEnvironment
    const row = toRow({
      destination,
      eventType: args.eventType,
      payload,
      userId: Option.getOrUndefined(args.userId),
      idempotencyKey: Option.getOrUndefined(args.idempotencyKey),
      maxAttempts: Option.getOrUndefined(args.maxAttempts),
      deliverAfter: Option.getOrUndefined(Option.map(args.delay, (seconds) => seconds * 1000)),
      // The caller's trace context (W3C env-var carrier): the delivery spans join the caller's trace.
      traceparent: io.env.TRACEPARENT?.trim().toLowerCase() || undefined
    }, keyring, settings.defaultMaxAttempts)
    if (Either.isLeft(row)) return yield* new UsageError({ flag: flagOf(row.left.field), reason: row.left.reason })
    const [enqueued] = yield* withDatabase(settings, insertRows([row.right]))
    if (args.json) yield* printJson(enqueued)
    else {
      // stdout carries the id alone, so `ID=$(webhook-worker enqueue …)` works for a repeat too.
      yield* say(enqueued!.id)
      if (enqueued!.duplicate) yield* note("already queued with this idempotency key: nothing new was queued")
    }
  })).pipe(Command.withDescription("Queue one delivery and print its id"))

const flagOf = (field: string) =>
  ({
    eventType: "--event-type",
    maxAttempts: "--max-attempts",
    idempotencyKey: "--idempotency-key",
    deliverAfter: "--delay",
    url: "--url",
    secret: "--secret",
    payload: "--payload",
    endpoint: "--endpoint",
    traceparent: "TRACEPARENT"
  } as Record<string, string>)[field] ?? field

// == stats

const statsCommand = Command.make("stats", { json, envFile }, ({ envFile, json }) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(envFile)
    const rows = yield* withDatabase(settings, queueStats)
    if (json) return yield* printJson(rows)
    if (rows.length === 0) return yield* say("The queue is empty.")
    yield* printTable(["status", "count", "oldest_pending", "avg_attempts"], rows.map((row) => ({
      ...row,
      avg_attempts: row.avg_attempts?.toFixed(2)
    })))
  })).pipe(Command.withDescription("Queue statistics (get_webhook_queue_stats())"))

// == dlq

// A date, or a date and time with optional seconds, fraction and offset: ISO-8601's forms.
// `new Date` alone also reads "1" (as 2001) and RFC 2822 dates, and rolls Feb 30 into March.
const ISO_TIME = /^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?(Z|[+-]([01]\d|2[0-3]):?[0-5]\d)?)?$/i

/** An ISO-8601 time as a Date; undefined for anything else. */
export const parseIsoTime = (raw: string): Date | undefined => {
  const text = raw.trim()
  const match = ISO_TIME.exec(text)
  if (match === null) return undefined
  const [year, month, day] = [Number(match[1]), Number(match[2]), Number(match[3])]
  if (day > new Date(Date.UTC(year, month, 0)).getUTCDate()) return undefined
  // Offsets written without a colon (+0200) are ISO-8601 too; Date wants +02:00.
  const date = new Date(text.replace(/([+-]\d{2})(\d{2})$/, "$1:$2"))
  return Number.isNaN(date.getTime()) ? undefined : date
}

const dlqList = Command.make("list", {
  json,
  limit: numberOption("limit", { integer: true, min: 1 }).pipe(Options.withDefault(50), Options.withDescription("Rows to show (newest first)")),
  envFile
}, ({ envFile, json, limit }) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(envFile)
    const rows = yield* withDatabase(settings, listDeadLetters(limit))
    if (json) return yield* printJson(rows)
    if (rows.length === 0) return yield* say("No dead letters.")
    yield* printTable(
      ["id", "event_type", "attempt_count", "last_response_status", "dead_lettered_at", "last_error"],
      rows.map((row) => ({ ...row, last_error: row.last_error?.slice(0, 100) }))
    )
  })).pipe(Command.withDescription("Dead-lettered deliveries, newest first"))

const dlqRetry = Command.make("retry", {
  ids: Args.text({ name: "id" }).pipe(Args.repeated),
  all: Options.boolean("all").pipe(Options.withDescription("Every dead letter matching the filters")),
  eventType: Options.text("event-type").pipe(Options.optional),
  since: Options.text("since").pipe(
    Options.withPseudoName("ISO"),
    Options.withDescription("Only those dead-lettered at or after this ISO-8601 time, e.g. 2025-10-29T00:00:00Z or 2025-10-29"),
    Options.optional
  ),
  endpoint: Options.text("endpoint").pipe(Options.optional),
  batchSize: batchSize.pipe(Options.withDescription("With --all: rows per committed batch (default 1000)")),
  envFile
}, (args) =>
  Effect.gen(function*() {
    const filtered = Option.isSome(args.eventType) || Option.isSome(args.since) || Option.isSome(args.endpoint)
    if (args.all && args.ids.length > 0) return yield* new UsageError({ flag: "--all", reason: "cannot be combined with ids" })
    if (!args.all && args.ids.length === 0) return yield* new UsageError({ flag: "id", reason: "give one or more ids, or --all" })
    if (!args.all && filtered) return yield* new UsageError({ flag: "--event-type/--since/--endpoint", reason: "only apply with --all" })
    if (!args.all && Option.isSome(args.batchSize)) return yield* new UsageError({ flag: "--batch-size", reason: "only applies with --all" })
    const bad = args.ids.find((id) => !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id))
    if (bad !== undefined) return yield* new UsageError({ flag: "id", reason: `"${bad}" is not a delivery id (a UUID)` })
    const since = Option.getOrUndefined(args.since)
    const sinceDate = since === undefined ? undefined : parseIsoTime(since)
    if (since !== undefined && sinceDate === undefined) {
      return yield* new UsageError({
        flag: "--since",
        reason: `"${since.slice(0, 60)}" is not an ISO-8601 time (e.g. 2025-10-29T00:00:00Z or 2025-10-29)`
      })
    }
    const endpoint = Option.getOrUndefined(args.endpoint)
    if (endpoint !== undefined && !/^[0-9a-f-]{36}$/i.test(endpoint)) {
      return yield* new UsageError({ flag: "--endpoint", reason: `"${endpoint}" is not an endpoint id (a UUID)` })
    }
    const settings = yield* settingsFrom(args.envFile)
    if (args.all) {
      const progress = makeProgress("dlq retry", yield* CliEnvironment)
      let expected = 0
      const result = yield* withDatabase(settings, retryAllDeadLetters(
        { eventType: Option.getOrUndefined(args.eventType), since: sinceDate, endpointId: endpoint },
        {
          onStart: (n) => Effect.sync(() => (expected = n)),
          onProgress: (done) => progress.update(done, Math.max(expected, done))
        },
        Option.getOrUndefined(args.batchSize)
      )).pipe(Effect.ensuring(progress.finish))
      return yield* say(`Requeued ${result.requeued} dead letter${result.requeued === 1 ? "" : "s"}.`)
    }
    const requeued = yield* withDatabase(settings, retryDeadLetters(args.ids))
    const missing = args.ids.filter((id) => !requeued.includes(id.toLowerCase()))
    yield* say(`Requeued ${requeued.length} dead letter${requeued.length === 1 ? "" : "s"}.`)
    if (missing.length > 0) {
      return yield* new CommandFailed({ reason: `not dead letters (unknown or not dead-lettered): ${missing.join(", ")}` })
    }
  })).pipe(Command.withDescription("Put dead letters back to pending with a fresh attempt budget"))

const dlqCommand = Command.make("dlq").pipe(
  Command.withDescription("Dead letter queue"),
  Command.withSubcommands([dlqList, dlqRetry, dlqArchiveCommand])
)

// == keygen

const keygenCommand = Command.make("keygen", {}, () => say(generateEncryptionKey())).pipe(
  Command.withDescription("Print a new base64 32-byte encryption key (for WEBHOOK_SECRET_ENCRYPTION_KEY)")
)

export const root = Command.make("webhook-worker").pipe(
  Command.withDescription("Webhook delivery worker with its queue in PostgreSQL"),
  Command.withSubcommands([migrateCommand, runCommand, enqueueCommand, statsCommand, dlqCommand, keygenCommand, receiveCommand, ...opsCommands])
)

export const cli = Command.run(root, { name: "webhook-worker", version })

/** Exposed for tests: the table layout `stats` and `dlq list` print. */
export { formatTable }
