import type * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import type * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { type AppSettings, ConfigInvalid } from "../config/AppConfig.js"
import * as Database from "./Database.js"
import * as Embedded from "./EmbeddedDatabase.js"

/** How a command reaches its database, and how its worker learns of new rows. */
export interface DatabaseChoice {
  readonly layer: Layer.Layer<Database.PgPool | PgClient.PgClient | SqlClient.SqlClient, DatabaseError>
  /** LISTEN/NOTIFY works (a real server); otherwise the worker polls. */
  readonly notifications: boolean
  /** For the start-up banner: where the data lives (no password). */
  readonly description: string
  /** The worker's start-up banner about this database: what it is for and what it does not do. */
  readonly banner: Effect.Effect<void>
}

export type DatabaseError = SqlError.SqlError | Embedded.EmbeddedLayerError

export type Purpose = "worker" | "command"

/**
 * DATABASE_URL when set; otherwise the embedded database (EmbeddedDatabase.ts). The CLI's
 * settings come through embeddedDefaults, which refuses the embedded database on a production
 * host before this is reached.
 */
export const databaseFor = (
  settings: AppSettings,
  purpose: Purpose
): Effect.Effect<DatabaseChoice, ConfigInvalid | Embedded.EmbeddedDatabaseBusy> =>
  Option.match(settings.databaseUrl, {
    onSome: (url) =>
      Effect.succeed<DatabaseChoice>({
        layer: Database.layer({ url, maxConnections: purpose === "worker" ? Database.WORKER_POOL_SIZE : 2 }),
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
 * Why the embedded database must not be used by this process, if it must not: an env file was
 * given (systemd always gives one) or NODE_ENV=production (the unit sets it). A production host
 * whose env file lost DATABASE_URL would otherwise run on an empty database of its own.
 */
export const embeddedRefusal = (envFiles: ReadonlyArray<string>, env: NodeJS.ProcessEnv): ConfigInvalid | undefined => {
  const reasons = [
    envFiles.length > 0 ? "an --env-file was given" : "",
    env.NODE_ENV?.trim().toLowerCase() === "production" ? "NODE_ENV=production" : ""
  ].filter((reason) => reason !== "")
  return reasons.length === 0 ? undefined : new ConfigInvalid({
    variable: "DATABASE_URL",
    reason: `is required (${reasons.join(", ")}); the embedded database is for development only`
  })
}

/**
 * Settings for a first run without DATABASE_URL, applied to what the environment says
 * (unchanged when DATABASE_URL is set, so production stays explicit):
 * - WEBHOOK_SECRET_ENCRYPTION_KEY unset: a key generated into the data folder, beside the
 *   secrets it encrypts;
 * - WORKER_POLL_INTERVAL unset: 0.25 s, since LISTEN/NOTIFY does not work in PGlite;
 * - WEBHOOK_ALLOW_PRIVATE_NETWORKS unset: true, so `webhook-worker receive` on 127.0.0.1 gets
 *   deliveries on a first run.
 * A variable set explicitly always wins. Without DATABASE_URL where embeddedRefusal says no,
 * this fails (exit 2) before anything is written to a data folder.
 */
export const embeddedDefaults = (
  settings: AppSettings,
  envFiles: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv = process.env
): Effect.Effect<AppSettings, ConfigInvalid> => {
  if (Option.isSome(settings.databaseUrl)) return Effect.succeed(settings)
  const refusal = embeddedRefusal(envFiles, env)
  if (refusal !== undefined) return Effect.fail(refusal)
  // No env file here (refused above): what is set explicitly is in the environment.
  const isSet = (name: string) => (env[name] ?? "") !== ""
  return Effect.gen(function*() {
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
}
