import type { SqlClient, SqlError } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, type Layer, Option, Redacted } from "effect"
import type { AppSettings, ConfigInvalid } from "../config/AppConfig.js"
import { readEnvFile } from "../config/EnvFile.js"
import * as Database from "./Database.js"
import * as Embedded from "./EmbeddedDatabase.js"

/** How a command reaches its database, and how its worker learns of new rows. */
export interface DatabaseChoice {
  readonly layer: Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, DatabaseError>
  /** LISTEN/NOTIFY works (a real server); otherwise the worker polls. */
  readonly notifications: boolean
  /** For the start-up banner: where the data lives (no password). */
  readonly description: string
  /** The worker's start-up banner about this database: what it is for and what it does not do. */
  readonly banner: Effect.Effect<void>
}

export type DatabaseError = SqlError.SqlError | Embedded.EmbeddedLayerError

export type Purpose = "worker" | "command"

/** DATABASE_URL when set; otherwise the embedded database (EmbeddedDatabase.ts). */
export const databaseFor = (
  settings: AppSettings,
  purpose: Purpose
): Effect.Effect<DatabaseChoice, ConfigInvalid | Embedded.EmbeddedDatabaseBusy> =>
  Option.match(settings.databaseUrl, {
    onSome: (url) =>
      Effect.succeed<DatabaseChoice>({
        layer: Database.layer({ url, maxConnections: purpose === "worker" ? 4 : 2 }),
        notifications: true,
        description: Database.describeUrl(url),
        banner: Effect.void
      }),
    onNone: () => {
      const paths = Embedded.embeddedPaths()
      return Effect.as(
        purpose === "worker" ? Embedded.refuseIfWorkerRuns(paths) : Effect.void,
        embeddedChoice(settings, purpose, paths)
      )
    }
  })

const embeddedChoice = (settings: AppSettings, purpose: Purpose, paths: Embedded.EmbeddedPaths): DatabaseChoice => ({
  layer: purpose === "worker" ? Embedded.workerLayer(paths) : Embedded.commandLayer(paths),
  notifications: false,
  description: `embedded PGlite in ${paths.pgdata}`,
  banner: Effect.logWarning("No DATABASE_URL: using the embedded database (PGlite), for first runs and development; production sets DATABASE_URL").pipe(
    Effect.annotateLogs(embeddedBannerFields(settings, paths))
  )
})

/** What the banner says about embedded mode, in fields (one log line). */
export const embeddedBannerFields = (settings: AppSettings, paths: Embedded.EmbeddedPaths): Record<string, string> => {
  const fields: Record<string, string> = {
    data_dir: paths.pgdata,
    limits: [
      `one worker process per data folder (${Embedded.DATA_DIR_VARIABLE})`,
      `polls every ${settings.pollIntervalMs / 1000} s (no LISTEN/NOTIFY)`,
      "fsync off: survives a process crash, not a power loss",
      "queries run one at a time"
    ].join("; ")
  }
  const stored = Embedded.readStoredKey(paths)
  if (stored !== null && Option.exists(settings.encryptionKey, (key) => Redacted.value(key).trim() === stored)) {
    fields.encryption_key = `WEBHOOK_SECRET_ENCRYPTION_KEY not set: using the key generated in ${paths.key} (keep it with the data)`
  }
  if (settings.allowPrivateNetworks) {
    fields.private_networks = "loopback and private destinations are allowed (embedded default; WEBHOOK_ALLOW_PRIVATE_NETWORKS=false blocks them)"
  }
  return fields
}

/** Embedded mode's poll interval while WORKER_POLL_INTERVAL is unset: no notifications arrive. */
export const EMBEDDED_POLL_INTERVAL_MS = 250

/**
 * Settings for a first run without DATABASE_URL, applied to what the environment and env file
 * say (unchanged when DATABASE_URL is set, so production stays explicit):
 * - WEBHOOK_SECRET_ENCRYPTION_KEY unset: a key generated into the data folder, beside the
 *   secrets it encrypts;
 * - WORKER_POLL_INTERVAL unset: 0.25 s, since LISTEN/NOTIFY does not work in PGlite;
 * - WEBHOOK_ALLOW_PRIVATE_NETWORKS unset: true, so `webhook-worker receive` on 127.0.0.1 gets
 *   deliveries on a first run.
 * A variable set explicitly (environment or env file) always wins.
 */
export const embeddedDefaults = (
  settings: AppSettings,
  envFile: Option.Option<string>,
  env: NodeJS.ProcessEnv = process.env
): Effect.Effect<AppSettings, ConfigInvalid> =>
  Option.isSome(settings.databaseUrl)
    ? Effect.succeed(settings)
    : Effect.gen(function*() {
      const isSet = yield* explicitlySet(envFile, env)
      const paths = Embedded.embeddedPaths(env)
      const encryptionKey = Option.isSome(settings.encryptionKey)
        ? settings.encryptionKey
        : Option.some(yield* Embedded.storedEncryptionKey(paths))
      return {
        ...settings,
        encryptionKey,
        pollIntervalMs: isSet("WORKER_POLL_INTERVAL") ? settings.pollIntervalMs : EMBEDDED_POLL_INTERVAL_MS,
        allowPrivateNetworks: isSet("WEBHOOK_ALLOW_PRIVATE_NETWORKS") ? settings.allowPrivateNetworks : true
      }
    })

/** Whether a variable has a value, the way AppConfig.providerFrom merges environment and env file. */
const explicitlySet = (envFile: Option.Option<string>, env: NodeJS.ProcessEnv) =>
  Effect.map(
    Option.match(envFile, { onNone: () => Effect.succeed(new Map<string, string>()), onSome: (path) => readEnvFile(path) }),
    (fileVars) => (name: string) => {
      const fromFile = fileVars.get(name)
      if (fromFile !== undefined) return fromFile !== ""
      const fromEnv = env[name]
      return fromEnv !== undefined && fromEnv !== ""
    }
  )
