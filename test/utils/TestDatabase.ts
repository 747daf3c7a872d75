import * as Database from "../../src/db/Database.js"
import { Effect, Layer, Redacted } from "effect"
import Pg from "pg"
import { inject } from "vitest"
import { adminUrl, databaseUrl } from "./urls.js"

/** Runs `run` on an admin connection to the test server (to create, break or drop test databases). */
export const admin = <A>(run: (client: Pg.Client) => Promise<A>) =>
  Effect.promise(async () => {
    const client = new Pg.Client({ connectionString: adminUrl() })
    await client.connect()
    try {
      return await run(client)
    } finally {
      await client.end()
    }
  })

let counter = 0

/** A fresh, migrated database for the scope's lifetime (a copy of the run's template). */
export const testDatabase = Effect.acquireRelease(
  Effect.gen(function*() {
    const name = `ww_t_${process.pid}_${Date.now().toString(36)}_${counter++}`
    yield* admin((client) => client.query(`CREATE DATABASE ${name} TEMPLATE ${inject("templateDatabase")}`))
    return { name, url: databaseUrl(name) }
  }),
  ({ name }) =>
    admin(async (client) => {
      // Connections the scope closed may still be saying goodbye: a backend terminated then hands
      // its client an error after the pool stopped listening (an uncaught error in the run). Give
      // them a moment to go by themselves; only stragglers are terminated.
      const deadline = Date.now() + 2000
      while (Date.now() < deadline) {
        const { rows } = await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1`, [name])
        if (rows[0]!.n === 0) break
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      await client.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [name])
      await client.query(`DROP DATABASE IF EXISTS ${name}`)
    })
)

/** PgClient (and SqlClient, and the PgPool under them) on a fresh test database, as the worker process connects. */
export const layerPg = Layer.unwrapScoped(
  Effect.map(testDatabase, ({ url }) => Database.layer({ url: Redacted.make(url), maxConnections: 6 }))
)

/** The same, also exposing the database URL (for spawning worker processes against it). */
export class TestDb extends Effect.Service<TestDb>()("test/TestDb", { scoped: testDatabase }) {}
