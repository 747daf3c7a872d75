import type { SqlClient, SqlError } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Effect, type Layer } from "effect"
import type { AppSettings, ConfigInvalid } from "../config/AppConfig.js"
import * as Database from "./Database.js"

/** How a command reaches its database, and how its worker learns of new rows. */
export interface DatabaseChoice {
  readonly layer: Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError.SqlError>
  /** LISTEN/NOTIFY works (a real server); otherwise the worker polls. */
  readonly notifications: boolean
  /** For the start-up banner: where the data lives (no password). */
  readonly description: string
}

export type Purpose = "worker" | "command"

/** The database for DATABASE_URL. */
export const databaseFor = (settings: AppSettings, purpose: Purpose): Effect.Effect<DatabaseChoice, ConfigInvalid> =>
  Effect.map(Database.requireDatabaseUrl(settings), (url) => ({
    layer: Database.layer({ url, maxConnections: purpose === "worker" ? 4 : 2 }),
    notifications: true,
    description: Database.describeUrl(url)
  }))
