import { HelpDoc, Options, ValidationError } from "@effect/cli"
import { Effect, Option } from "effect"
import { type AppSettings, loadFromEnvironment, requireEncryptionKey } from "../config/AppConfig.js"
import { keyringOf } from "../crypto/Keyring.js"
import { databaseFor, embeddedDefaults } from "../db/Connect.js"
import { CliEnvironment } from "./CliEnvironment.js"

// What every command module shares: options, how settings are read, how the database is reached.

export const envFile = Options.file("env-file", { exists: "either" }).pipe(
  Options.withDescription("Read variables from this file (KEY=value lines); they override the environment"),
  Options.optional
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

/** Settings as every command reads them: environment, env file, and the embedded database's defaults. */
export const settingsFrom = (file: Option.Option<string>) =>
  Effect.flatMap(CliEnvironment, (io) =>
    loadFromEnvironment(file, io.env).pipe(Effect.flatMap((settings) => embeddedDefaults(settings, file, io.env))))

/** Runs `effect` with a database client: DATABASE_URL, or the embedded database (db/Connect.ts). */
export const withDatabase = <A, E, R>(settings: AppSettings, effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(databaseFor(settings, "command"), (database) => effect.pipe(Effect.provide(database.layer)))

/** The keyring, or the one-line error naming WEBHOOK_SECRET_ENCRYPTION_KEY. */
export const keyringFrom = (settings: AppSettings) =>
  Effect.map(requireEncryptionKey(settings), () => Option.getOrThrow(keyringOf(settings)))
