import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlError from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { readdir, readFile } from "node:fs/promises"
import { join } from "node:path"
import { packageRoot } from "../PackageInfo.js"

export interface Migration {
  readonly version: number
  readonly name: string
  readonly sql: string
}

export class MigrationFailed extends Data.TaggedError("MigrationFailed")<{
  readonly migration: string
  readonly cause: unknown
}> {
  override get message() {
    const detail = this.cause instanceof Error ? (this.cause.cause instanceof Error ? this.cause.cause.message : this.cause.message) : String(this.cause)
    return `migration ${this.migration} failed: ${detail}`
  }
}

export class MigrationsUnreadable extends Data.TaggedError("MigrationsUnreadable")<{
  readonly directory: string
  readonly cause: unknown
}> {
  override get message() {
    return `cannot read migrations from ${this.directory}: ${String(this.cause)}`
  }
}

export const migrationsDirectory = join(packageRoot, "migrations")

/** `migrations/NNNN_name.sql`, in version order. */
export const readMigrations = (directory = migrationsDirectory) =>
  Effect.tryPromise({
    try: async () => {
      const files = (await readdir(directory)).filter((file) => /^\d+_.+\.sql$/.test(file)).sort()
      return Promise.all(files.map(async (file): Promise<Migration> => ({
        version: Number(file.split("_", 1)[0]),
        name: file.replace(/\.sql$/, ""),
        sql: await readFile(join(directory, file), "utf8")
      })))
    },
    catch: (cause) => new MigrationsUnreadable({ directory, cause })
  })

// Any constant will do; it only has to be the same for every migrating process.
const MIGRATION_LOCK = 7_204_851_113

/**
 * Applies pending migrations in one transaction under a transaction-scoped advisory lock, so a
 * second process migrating at the same time waits and then finds nothing left to do.
 * Returns the names applied.
 */
export const migrate = (migrations: ReadonlyArray<Migration>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`
      yield* sql`CREATE TABLE IF NOT EXISTS webhook_worker_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`
      const rows = yield* sql<{ version: number }>`SELECT version FROM webhook_worker_migrations`
      const applied = new Set(rows.map((row) => row.version))
      const done: Array<string> = []
      for (const migration of migrations) {
        if (applied.has(migration.version)) continue
        yield* sql.unsafe(migration.sql).pipe(
          Effect.mapError((cause) => new MigrationFailed({ migration: migration.name, cause }))
        )
        yield* sql`INSERT INTO webhook_worker_migrations (version, name) VALUES (${migration.version}, ${migration.name})`
        done.push(migration.name)
      }
      return done
    }))
  })

/** Versions not yet applied (all of them when the bookkeeping table does not exist). */
export const pendingMigrations = (migrations: ReadonlyArray<Migration>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const exists = yield* sql<{ present: boolean }>`SELECT to_regclass('webhook_worker_migrations') IS NOT NULL AS present`
    if (exists[0]?.present !== true) return migrations
    const rows = yield* sql<{ version: number }>`SELECT version FROM webhook_worker_migrations`
    const applied = new Set(rows.map((row) => row.version))
    return migrations.filter((migration) => !applied.has(migration.version))
  })

/** Migrates when something is pending; a no-op read otherwise (so a role without DDL rights can run). */
export const ensureMigrated = Effect.gen(function*() {
  const migrations = yield* readMigrations()
  const pending = yield* pendingMigrations(migrations)
  if (pending.length === 0) return [] as ReadonlyArray<string>
  return yield* migrate(migrations)
})

export type MigrateError = MigrationFailed | MigrationsUnreadable | SqlError.SqlError
