import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { AppSettings } from "../config/AppConfig.js"
import { ConfigInvalid } from "../config/AppConfig.js"
import Pg from "pg"

export interface DatabaseOptions {
  readonly url: Redacted.Redacted<string>
  /** Connections in the pool: the worker needs few (claims and completions are batched). */
  readonly maxConnections?: number
  readonly applicationName?: string
}

/** Connections of a worker process's pool: claims and completions are batched, so a few do. */
export const WORKER_POOL_SIZE = 4

/**
 * The pg pool behind the PgClient of `layer`. The worker's claims and untraced result writes go
 * to it directly (see DeliveryQueue); a host's own PgClient has none, and everything then goes
 * through @effect/sql.
 */
export class PgPool extends Context.Tag("webhook-worker/PgPool")<PgPool, Pg.Pool>() {}

const CONNECT_TIMEOUT = Duration.seconds(10)

/** A `pg` pool for `options.url`; the caller ends it. */
export const makePool = (options: DatabaseOptions): Pg.Pool => {
  const pool = new Pg.Pool({
    connectionString: Redacted.value(options.url),
    max: options.maxConnections ?? WORKER_POOL_SIZE,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: Duration.toMillis(CONNECT_TIMEOUT),
    application_name: options.applicationName ?? "webhook-worker",
    // A connection the network dropped without a word (a failover, a NAT timeout) would leave a
    // statement waiting on it forever; TCP keepalive probes find the dead peer and fail it.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000
  })
  // An idle connection dropped by the server (a restart, a failover) is an "error" event on the
  // pool; unheard, Node would crash the process. The next query opens a new connection.
  pool.on("error", () => undefined)
  return pool
}

/** A pool for DATABASE_URL, checked with one query, and closed with the scope. */
const pool = (options: DatabaseOptions) =>
  Effect.acquireRelease(
    Effect.sync(() => makePool(options)),
    (pool) => Effect.promise(() => pool.end()).pipe(Effect.interruptible, Effect.timeoutOption(Duration.seconds(1)))
  ).pipe(
    Effect.tap((pool) =>
      Effect.tryPromise({
        try: () => pool.query("SELECT 1"),
        catch: (cause) => new SqlError({ cause, message: "PgClient: Failed to connect" })
      }).pipe(
        Effect.timeoutFail({
          duration: CONNECT_TIMEOUT,
          onTimeout: () => new SqlError({ cause: new Error("Connection timed out"), message: "PgClient: Connection timed out" })
        })
      )
    )
  )

/** A PgClient for DATABASE_URL, and the PgPool under it. */
export const layer = (options: DatabaseOptions): Layer.Layer<PgPool | PgClient.PgClient | SqlClient.SqlClient, SqlError> =>
  Layer.scopedContext(Effect.gen(function*() {
    const pg = yield* pool(options)
    const client = yield* PgClient.fromPool({ acquire: Effect.succeed(pg), applicationName: options.applicationName ?? "webhook-worker" })
    return Context.make(PgPool, pg).pipe(Context.add(PgClient.PgClient, client), Context.add(SqlClient.SqlClient, client))
  })).pipe(Layer.provide(Reactivity.layer))

/** DATABASE_URL, or a configuration error naming it. */
export const requireDatabaseUrl = (settings: AppSettings) =>
  Option.match(settings.databaseUrl, {
    onNone: () => Effect.fail(new ConfigInvalid({ variable: "DATABASE_URL", reason: "is not set" })),
    onSome: (url) => Effect.succeed(url)
  })

/** The connection string with its password hidden, for banners and errors. */
export const describeUrl = (url: Redacted.Redacted<string>) =>
  Redacted.value(url).replace(/(\/\/[^:/@]*):[^@]*@/, "$1:***@")
