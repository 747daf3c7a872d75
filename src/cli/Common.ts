import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { type AppSettings, loadFromEnvironment, requireEncryptionKey } from "../config/AppConfig.js"
import { keyringOf } from "../crypto/Keyring.js"
import { databaseFor, embeddedDefaults } from "../db/Connect.js"
import { CliEnvironment } from "./CliEnvironment.js"

// What every command module shares: options, how settings are read, how the database is reached.

export const envFile = Options.file("env-file", { exists: "either" }).pipe(
  Options.withDescription(
    "Read variables from this file (KEY=value lines); they override the environment. Repeatable: a later file wins. " +
      "Given a file, the command requires DATABASE_URL (no embedded database)"
  ),
  Options.repeated
)

export const json = Options.boolean("json").pipe(Options.withDescription("Print one JSON document"))

/** A numeric option whose error names the flag (the stock integer option's message does not). */
export const numberOption = (name: string, kind: { integer: boolean; min: number; max?: number }) =>
  Options.text(name).pipe(
    Options.withPseudoName(kind.integer ? "integer" : "number"),
    Options.mapEffect((raw) => {
      const value = Number(raw)
      const ok = raw.trim() !== "" && Number.isFinite(value) && (!kind.integer || Number.isInteger(value)) &&
        value >= kind.min && (kind.max === undefined || value <= kind.max)
      const range = kind.max === undefined ? `of at least ${kind.min}` : `from ${kind.min} to ${kind.max}`
      return ok
        ? Effect.succeed(value)
        : Effect.fail(ValidationError.invalidValue(HelpDoc.p(
          `--${name}: expected ${kind.integer ? "an integer" : "a number"} ${range}, got "${raw}"`
        )))
    })
  )

/** `--batch-size N`: rows per committed batch of a long command (its default is the command's). */
export const batchSize = numberOption("batch-size", { integer: true, min: 1, max: 100_000 }).pipe(
  Options.withDescription("Rows per committed batch"),
  Options.optional
)

/**
 * Settings as every command reads them: environment, env files, and the embedded database's
 * defaults (which refuse the embedded database when an env file is given or NODE_ENV=production).
 */
export const settingsFrom = (files: ReadonlyArray<string>) =>
  Effect.flatMap(CliEnvironment, (io) =>
    loadFromEnvironment(files, io.env).pipe(Effect.flatMap((settings) => embeddedDefaults(settings, files, io.env))))

/** A word as a POSIX shell reads it back (quoted only when it must be). */
const shellWord = (word: string) => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`)

/**
 * A command line to suggest in a hint, with this run's env files, so it can be pasted as it is
 * (on a systemd host every command needs `--env-file`).
 */
export const commandHint = (args: string, files: ReadonlyArray<string>) =>
  ["webhook-worker", args, ...files.map((file) => `--env-file ${shellWord(file)}`)].join(" ")

/** Runs `effect` with a database client: DATABASE_URL, or the embedded database (db/Connect.ts). */
export const withDatabase = <A, E, R>(settings: AppSettings, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(databaseFor(settings, "command"), (database) => effect.pipe(Effect.provide(database.layer)))

/** The keyring, or the one-line error naming WEBHOOK_SECRET_ENCRYPTION_KEY. */
export const keyringFrom = (settings: AppSettings) =>
  Effect.map(requireEncryptionKey(settings), () => Option.getOrThrow(keyringOf(settings)))
