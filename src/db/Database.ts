import * as PgClient from "@effect/sql-pg/PgClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { AppSettings } from "../config/AppConfig.js"
import { ConfigInvalid } from "../config/AppConfig.js"

export interface DatabaseOptions {
  readonly url: Redacted.Redacted<string>
  /** Connections in the pool: the worker needs few (claims and completions are batched). */
  readonly maxConnections?: number
  readonly applicationName?: string
}

/** Connections of a worker process's pool: claims and completions are batched, so a few do. */
export const WORKER_POOL_SIZE = 4

/** A PgClient for DATABASE_URL. */
export const layer = (options: DatabaseOptions) =>
  PgClient.layer({
    url: options.url,
    maxConnections: options.maxConnections ?? WORKER_POOL_SIZE,
    idleTimeout: Duration.seconds(30),
    connectTimeout: Duration.seconds(10),
    applicationName: options.applicationName ?? "webhook-worker"
  })

/** DATABASE_URL, or a configuration error naming it. */
export const requireDatabaseUrl = (settings: AppSettings) =>
  Option.match(settings.databaseUrl, {
    onNone: () => Effect.fail(new ConfigInvalid({ variable: "DATABASE_URL", reason: "is not set" })),
    onSome: (url) => Effect.succeed(url)
  })

/** The connection string with its password hidden, for banners and errors. */
export const describeUrl = (url: Redacted.Redacted<string>) =>
  Redacted.value(url).replace(/(\/\/[^:/@]*):[^@]*@/, "$1:***@")
