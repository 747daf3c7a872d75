import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import type { Keyring } from "../crypto/Keyring.js"
import { type RotationReport, rotateKey } from "../crypto/Rotation.js"
import { validateUrl } from "../queue/Enqueue.js"
import * as Endpoints from "../queue/Endpoints.js"
import { archiveDeadLetters, cleanupDelivered } from "../queue/Operations.js"
import { batchSize, commandHint, envFile, json, keyringFrom, numberOption, settingsFrom, withDatabase } from "./Common.js"
import { CliEnvironment, note, say } from "./CliEnvironment.js"
import { CommandFailed, makeProgress, printJson, printTable, UsageError } from "./Output.js"

/**
 * Operations commands: endpoints, dead-letter archive, cleanup, key rotation. Bad input exits 2
 * with one line naming the flag or variable, as everywhere in the CLI.
 */

const olderThan = numberOption("older-than", { integer: true, min: 0, max: 36_500 }).pipe(
  Options.withPseudoName("DAYS"),
  Options.withDescription("Only rows older than this many days")
)

const endpointId = Args.text({ name: "ID" }).pipe(Args.withDescription("The endpoint's id (see `endpoints list`)"))

const FLAGS: Record<Endpoints.InvalidEndpoint["field"], string> = {
  url: "--url",
  secret: "--secret",
  eventTypes: "--event-types",
  userId: "--user-id",
  id: "ID",
  grace: "--grace"
}

const usage = (error: Endpoints.InvalidEndpoint) => new UsageError({ flag: FLAGS[error.field], reason: error.reason })

/** Checks an ID argument before anything else, so a typo is a usage error (exit 2). */
const checkId = (id: string) => Either.mapLeft(Endpoints.validateEndpointId(id), usage)

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`

// == endpoints

const endpointsAdd = Command.make("add", {
  url: Options.text("url").pipe(Options.withDescription("The partner's endpoint URL (http or https)")),
  userId: Options.text("user-id").pipe(Options.withDescription("The user or tenant it belongs to"), Options.optional),
  eventTypes: Options.text("event-types").pipe(
    Options.withPseudoName("a,b"),
    Options.withDescription("Comma-separated event types it receives (default: all); enqueue --endpoint refuses others"),
    Options.optional
  ),
  secret: Options.text("secret").pipe(
    Options.withPseudoName("whsec_…"),
    Options.withDescription("Signing secret: whsec_ and the base64 of 24 to 64 bytes (default: a new one of 32 random bytes)"),
    Options.optional
  ),
  json,
  envFile
}, (args) =>
  Effect.gen(function*() {
    // Input first: bad input is exit 2 whatever the configuration.
    yield* Either.mapLeft(validateUrl(args.url), (e) => new UsageError({ flag: "--url", reason: e.reason }))
    if (Option.isSome(args.secret)) yield* Either.mapLeft(Endpoints.validateEndpointSecret(args.secret.value), usage)
    const eventTypes = Option.isSome(args.eventTypes)
      ? yield* Either.mapLeft(Endpoints.parseEventTypes(args.eventTypes.value), usage)
      : undefined
    const settings = yield* settingsFrom(args.envFile)
    const keyring = yield* keyringFrom(settings)
    const added = yield* withDatabase(
      settings,
      Endpoints.addEndpoint({
        url: args.url,
        userId: Option.getOrUndefined(args.userId),
        eventTypes,
        secret: Option.getOrUndefined(args.secret)
      }, keyring)
    ).pipe(Effect.mapError((e) => (e._tag === "InvalidEndpoint" ? usage(e) : e)))
    if (args.json) yield* printJson({ ...added.endpoint, secret: added.secret })
    else yield* say(`id      ${added.endpoint.id}\nsecret  ${added.secret}`)
    yield* note("Give the secret to the partner now: it is stored encrypted and not shown again.")
  })).pipe(Command.withDescription("Register a partner endpoint; prints its id and signing secret (the only time the secret is shown)"))

const endpointsList = Command.make("list", { json, envFile }, ({ envFile, json }) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(envFile)
    const endpoints = yield* withDatabase(settings, Endpoints.listEndpoints)
    if (json) return yield* printJson(endpoints)
    if (endpoints.length === 0) return yield* say("No endpoints.")
    yield* printTable(
      ["id", "url", "user_id", "event_types", "enabled", "disabled_reason", "previous_secret_until", "created_at"],
      endpoints.map((endpoint) => ({
        ...endpoint,
        event_types: endpoint.event_types === null ? "*" : endpoint.event_types.join(","),
        enabled: endpoint.enabled ? "yes" : "no"
      }))
    )
  })).pipe(Command.withDescription("Registered endpoints (never their secrets)"))

const endpointsDisable = Command.make("disable", {
  id: endpointId,
  reason: Options.text("reason").pipe(Options.withDescription("Why (shown in `endpoints list`)"), Options.optional),
  envFile
}, (args) =>
  Effect.gen(function*() {
    const id = yield* checkId(args.id)
    const settings = yield* settingsFrom(args.envFile)
    const result = yield* withDatabase(settings, Endpoints.setEndpointEnabled(id, false, Option.getOrNull(args.reason)))
    if (!result.changed) {
      return yield* say(`Endpoint ${id} was already disabled${result.endpoint.disabled_reason ? ` (${result.endpoint.disabled_reason})` : ""}.`)
    }
    yield* say(`Disabled endpoint ${id}.`)
    if (result.queued > 0) {
      yield* say(
        `${plural(result.queued, "queued delivery", "queued deliveries")} will be dead-lettered as they fall due; ` +
          `after \`${commandHint(`endpoints enable ${id}`, args.envFile)}\`, ` +
          `\`${commandHint(`dlq retry --all --endpoint ${id}`, args.envFile)}\` requeues them.`
      )
    }
  })).pipe(Command.withDescription("Stop deliveries to an endpoint (its queued deliveries are dead-lettered as they fall due)"))

const endpointsEnable = Command.make("enable", { id: endpointId, envFile }, (args) =>
  Effect.gen(function*() {
    const id = yield* checkId(args.id)
    const settings = yield* settingsFrom(args.envFile)
    const result = yield* withDatabase(settings, Endpoints.setEndpointEnabled(id, true, null))
    yield* say(result.changed ? `Enabled endpoint ${id}.` : `Endpoint ${id} was already enabled.`)
    if (result.deadLetters > 0) {
      yield* say(
        `It has ${plural(result.deadLetters, "dead letter")}: \`${commandHint(`dlq retry --all --endpoint ${id}`, args.envFile)}\` requeues them.`
      )
    }
  })).pipe(Command.withDescription("Resume deliveries to an endpoint (also after a 410 disabled it)"))

const endpointsRotateSecret = Command.make("rotate-secret", {
  id: endpointId,
  grace: numberOption("grace", { integer: false, min: 0, max: Endpoints.MAX_GRACE_HOURS }).pipe(
    Options.withPseudoName("HOURS"),
    Options.withDescription("Hours the old secret keeps signing alongside the new one (0: stop at once)"),
    Options.withDefault(24)
  ),
  secret: Options.text("secret").pipe(
    Options.withPseudoName("whsec_…"),
    Options.withDescription("The new secret: whsec_ and the base64 of 24 to 64 bytes (default: a new one of 32 random bytes)"),
    Options.optional
  ),
  json,
  envFile
}, (args) =>
  Effect.gen(function*() {
    const id = yield* checkId(args.id)
    if (Option.isSome(args.secret)) yield* Either.mapLeft(Endpoints.validateEndpointSecret(args.secret.value), usage)
    const settings = yield* settingsFrom(args.envFile)
    const keyring = yield* keyringFrom(settings)
    const rotated = yield* withDatabase(
      settings,
      Endpoints.rotateEndpointSecret(id, args.grace, keyring, Option.getOrUndefined(args.secret))
    ).pipe(Effect.mapError((e) => (e._tag === "InvalidEndpoint" ? usage(e) : e)))
    const until = rotated.previousSecretUntil
    if (args.json) {
      yield* printJson({ id, secret: rotated.secret, previous_secret_until: until })
    } else {
      yield* say(`id      ${id}\nsecret  ${rotated.secret}`)
    }
    yield* note(
      until === null
        ? "The old secret no longer signs. Give the new secret to the partner now: it is not shown again."
        : `Until ${until.toISOString()} every request carries two signatures, with the old and the new secret. ` +
          "Give the new secret to the partner now: it is not shown again."
    )
    if (rotated.replacedOpenRotation) {
      yield* note("The previous rotation's grace window was still open: the secret before it stopped signing now.")
    }
  })).pipe(Command.withDescription("Give an endpoint a new signing secret; the old one keeps signing for --grace hours"))

const endpointsCommand = Command.make("endpoints").pipe(
  Command.withDescription("Registered partner endpoints (partner_webhooks)"),
  Command.withSubcommands([endpointsAdd, endpointsList, endpointsDisable, endpointsEnable, endpointsRotateSecret])
)

// == dlq archive

/** `webhook-worker dlq archive`; Cli.ts adds it to the `dlq` subcommands. */
export const dlqArchiveCommand = Command.make("archive", { olderThan, batchSize, json, envFile }, (args) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(args.envFile)
    const progress = makeProgress("dlq archive", yield* CliEnvironment)
    let total = 0
    const result = yield* withDatabase(
      settings,
      archiveDeadLetters(args.olderThan, {
        onStart: (n) => Effect.sync(() => (total = n)),
        onProgress: (done) => progress.update(done, Math.max(total, done))
      }, Option.getOrUndefined(args.batchSize))
    ).pipe(Effect.ensuring(progress.finish))
    if (args.json) return yield* printJson({ archived: result.archived, cutoff: result.cutoff })
    yield* say(
      `Archived ${plural(result.archived, "dead letter")} dead-lettered before ${result.cutoff.toISOString()} into webhook_dead_letter_archive.`
    )
  })).pipe(Command.withDescription("Move dead letters older than --older-than days into webhook_dead_letter_archive (batched)"))

// == cleanup

const cleanupCommand = Command.make("cleanup", { olderThan, batchSize, json, envFile }, (args) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(args.envFile)
    const progress = makeProgress("cleanup", yield* CliEnvironment)
    let total = 0
    const result = yield* withDatabase(
      settings,
      cleanupDelivered(args.olderThan, {
        onStart: (n) => Effect.sync(() => (total = n)),
        onProgress: (done) => progress.update(done, Math.max(total, done))
      }, Option.getOrUndefined(args.batchSize))
    ).pipe(Effect.ensuring(progress.finish))
    if (args.json) return yield* printJson({ removed: result.removed, cutoff: result.cutoff })
    yield* say(`Removed ${plural(result.removed, "delivered webhook")} older than ${plural(args.olderThan, "day")}.`)
  })).pipe(Command.withDescription(
    "Delete delivered webhooks (and their log rows) older than --older-than days, in committed batches: the rows cleanup_delivered_webhooks(DAYS) removes"
  ))

// == rotate-key

/** The one summary line of a rotation. */
export const rotationSummary = (report: RotationReport): string => {
  const { deliveries, endpoints } = report.reencrypted
  const what = deliveries + endpoints === 0
    ? "No secret needed re-encrypting"
    : `Re-encrypted the secrets of ${plural(endpoints, "endpoint")} and ${plural(deliveries, "delivery", "deliveries")}`
  const left = report.remaining === 0 && report.undecryptableCount === 0
    ? "none left under previous keys"
    : [
      report.undecryptableCount > 0 ? `${report.undecryptableCount} undecryptable (left unchanged)` : "",
      report.remaining > 0 ? `${report.remaining} still to do (run again)` : ""
    ].filter((part) => part !== "").join(", ")
  return `${what} under key ${report.currentKeyId}; ${left}.`
}

const rotateKeyCommand = Command.make("rotate-key", { batchSize, json, envFile }, (args) =>
  Effect.gen(function*() {
    const settings = yield* settingsFrom(args.envFile)
    const keyring: Keyring = yield* keyringFrom(settings)
    if (settings.previousEncryptionKeys.length === 0) {
      yield* note(
        "WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS is not set: only plaintext secrets can be encrypted; " +
          "secrets under any other key will be reported as undecryptable."
      )
    }
    const progress = makeProgress("rotate-key", yield* CliEnvironment)
    const report = yield* withDatabase(
      settings,
      rotateKey(keyring, {
        batchSize: Option.getOrElse(args.batchSize, () => 500),
        // A few examples name the problem; the count says how big it is.
        reportLimit: args.json ? 100 : 10,
        onProgress: ({ done, total }) => progress.update(done, total)
      })
    ).pipe(Effect.ensuring(progress.finish))
    if (args.json) yield* printJson(report)
    else yield* say(rotationSummary(report))
    for (const entry of report.undecryptable) {
      yield* note(`undecryptable: ${entry.table} ${entry.id} ${entry.column}: ${entry.reason}`)
    }
    if (report.undecryptableCount > report.undecryptable.length) {
      yield* note(`undecryptable: … and ${report.undecryptableCount - report.undecryptable.length} more`)
    }
    if (report.undecryptableCount > 0) {
      return yield* new CommandFailed({
        reason: `${plural(report.undecryptableCount, "secret")} could not be decrypted with any configured key and ` +
          "were left unchanged: add the key they were written with to WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS and run rotate-key again"
      })
    }
    if (report.remaining > 0) {
      return yield* new CommandFailed({
        reason: `${plural(report.remaining, "row")} still hold secrets under a previous key (busy, or written by a process ` +
          "still on the old configuration): run rotate-key again"
      })
    }
  })).pipe(Command.withDescription(
    "Re-encrypt every stored secret under WEBHOOK_SECRET_ENCRYPTION_KEY, reading old ones with WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS (batched, resumable, safe while workers run)"
  ))

/** The top-level commands this module adds; Cli.ts lists them among the root subcommands. */
export const opsCommands = [endpointsCommand, cleanupCommand, rotateKeyCommand] as const
