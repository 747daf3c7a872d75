import { PgClient } from "@effect/sql-pg"
import { Effect, Redacted } from "effect"
import Pg from "pg"
import { migrate, readMigrations } from "../../src/db/Migrator.js"
import { adminUrl, databaseUrl } from "./urls.js"

/**
 * Builds one migrated template database per test run (with the real migrator); each test file
 * then gets a copy (CREATE DATABASE … TEMPLATE), which takes milliseconds and keeps files apart.
 */
export default async function setup({ provide }: { provide: (key: "templateDatabase", value: string) => void }) {
  const template = `ww_tpl_${process.pid}_${Date.now().toString(36)}`
  const admin = new Pg.Client({ connectionString: adminUrl() })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${template}`)
  await Effect.runPromise(
    readMigrations().pipe(
      Effect.flatMap(migrate),
      Effect.provide(PgClient.layer({ url: Redacted.make(databaseUrl(template)), maxConnections: 1 }))
    )
  )
  provide("templateDatabase", template)
  return async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${template}`)
    await admin.end()
  }
}

declare module "vitest" {
  export interface ProvidedContext {
    templateDatabase: string
  }
}
