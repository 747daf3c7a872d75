import * as PgClient from "@effect/sql-pg/PgClient"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import Pg from "pg"

/** The channel the queue's triggers notify. */
export const CHANNEL = "webhook_delivery_queue"

/** Tells the worker that rows may be due now. */
export class Wakeup extends Context.Tag("webhook-worker/Wakeup")<Wakeup, {
  /** Calls `onWake` for each notification (and after each reconnect) for as long as the scope lives. */
  readonly subscribe: (onWake: () => void) => Effect.Effect<void, never, Scope.Scope>
}>() {
  /** No notifications: the worker relies on WORKER_POLL_INTERVAL (embedded mode, tests). */
  static readonly polling = Layer.succeed(Wakeup, { subscribe: () => Effect.void })
}

export const polling = Wakeup.polling

const clientConfig = (config: PgClient.PgClientConfig): Pg.ClientConfig => ({
  ...(config.url ? { connectionString: Redacted.value(config.url) } : {}),
  ...(config.host !== undefined ? { host: config.host } : {}),
  ...(config.port !== undefined ? { port: config.port } : {}),
  ...(config.database !== undefined ? { database: config.database } : {}),
  ...(config.username !== undefined ? { user: config.username } : {}),
  ...(config.password !== undefined ? { password: Redacted.value(config.password) } : {}),
  ...(config.ssl !== undefined ? { ssl: config.ssl } : {}),
  application_name: "webhook-worker listen",
  keepAlive: true
})

/**
 * LISTEN on a dedicated connection (not the pool), kept alive across PostgreSQL restarts: when
 * the connection drops it reconnects with backoff and wakes the worker once, to pick up whatever
 * arrived while nobody was listening.
 */
export const layerListen = Layer.effect(
  Wakeup,
  Effect.gen(function*() {
    const pg = yield* PgClient.PgClient
    const config = clientConfig(pg.config)
    return {
      subscribe: (onWake) =>
        Effect.gen(function*() {
          const connectOnce = Effect.async<void, Error>((resume) => {
            const client = new Pg.Client(config)
            let settled = false
            const finish = (error: Error) => {
              if (settled) return
              settled = true
              client.removeAllListeners("notification")
              client.end().catch(() => undefined)
              resume(Effect.fail(error))
            }
            client.on("error", finish)
            client.on("end", () => finish(new Error("LISTEN connection closed")))
            client.on("notification", () => onWake())
            client.connect()
              .then(() => client.query(`LISTEN ${CHANNEL}`))
              .then(() => onWake())
              .catch(finish)
            return Effect.sync(() => {
              settled = true
              client.removeAllListeners()
              client.on("error", () => undefined)
              client.end().catch(() => undefined)
            })
          })
          yield* connectOnce.pipe(
            Effect.tapError((error) =>
              Effect.logWarning("LISTEN connection lost; reconnecting").pipe(
                Effect.annotateLogs({ error: error.message })
              )
            ),
            Effect.retry(
              Schedule.exponential(Duration.millis(250), 2).pipe(
                Schedule.union(Schedule.spaced(Duration.seconds(5)))
              )
            ),
            Effect.forkScoped
          )
        })
    }
  })
)
