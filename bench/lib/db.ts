/**
 * Databases for the benchmark: a fresh one per pass on the local server (BENCH_DATABASE_URL, or
 * postgres://postgres:postgres@127.0.0.1:5432/postgres), dropped afterwards, plus the server-side
 * counters read from pg_stat_database.
 */
import Pg from "pg"

export const serverUrl = process.env.BENCH_DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/postgres"

/** The URL of database `name` on the same server. */
export const urlFor = (name: string): string => {
  const url = new URL(serverUrl)
  url.pathname = `/${name}`
  return url.toString()
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, "\"\"")}"`

/** A client on the server's maintenance database (where the statistics views are read). */
export class Admin {
  private constructor(readonly client: Pg.Client) {}

  private readonly created = new Set<string>()
  private counter = 0

  static async connect(): Promise<Admin> {
    const client = new Pg.Client({ connectionString: serverUrl, application_name: "webhook-worker bench admin" })
    client.on("error", () => undefined)
    await client.connect()
    const host = new URL(serverUrl).hostname
    if (host !== "127.0.0.1" && host !== "localhost" && host !== "::1") {
      await client.end()
      throw new Error(`BENCH_DATABASE_URL must point at this machine (got host ${host})`)
    }
    return new Admin(client)
  }

  /** Creates an empty database with a name unique to this run. */
  async createDatabase(label: string): Promise<string> {
    const name = `wwbench_${process.pid}_${++this.counter}_${label.replace(/[^a-z0-9]/g, "_")}`
    await this.client.query(`CREATE DATABASE ${quoteIdent(name)}`)
    this.created.add(name)
    return name
  }

  async dropDatabase(name: string): Promise<void> {
    await this.client.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`)
    this.created.delete(name)
  }

  /** Drops every database this run created and is still holding. */
  async dropAll(): Promise<void> {
    for (const name of [...this.created]) {
      await this.dropDatabase(name).catch(() => undefined)
    }
  }

  /** Statements and transactions the server has counted for the database (committed + rolled back). */
  async transactions(name: string): Promise<number> {
    const result = await this.client.query<{ xacts: string }>(
      "SELECT (xact_commit + xact_rollback)::text AS xacts FROM pg_stat_database WHERE datname = $1",
      [name]
    )
    return Number(result.rows[0]?.xacts ?? "0")
  }

  /** Waits until nothing is connected to the database (so every backend has flushed its statistics). */
  async waitForNoBackends(name: string, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      const result = await this.client.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1", [name])
      if ((result.rows[0]?.n ?? 0) === 0) return true
      await sleep(50)
    }
    return false
  }

  /** The server's current WAL insert position. */
  async walPosition(): Promise<string> {
    const result = await this.client.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn")
    return result.rows[0]?.lsn ?? "0/0"
  }

  /** WAL bytes written (by the whole server) since `position`. */
  async walBytesSince(position: string): Promise<number> {
    const result = await this.client.query<{ bytes: string }>("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::text AS bytes", [position])
    return Number(result.rows[0]?.bytes ?? "0")
  }

  async serverVersion(): Promise<string> {
    const result = await this.client.query<{ v: string }>("SELECT current_setting('server_version') AS v")
    return result.rows[0]?.v ?? "?"
  }

  async settings(names: ReadonlyArray<string>): Promise<Record<string, string>> {
    const result = await this.client.query<{ name: string; setting: string; unit: string | null }>(
      "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)",
      [names]
    )
    return Object.fromEntries(result.rows.map((row) => [row.name, row.unit ? `${row.setting} ${row.unit}` : row.setting]))
  }

  async close(): Promise<void> {
    await this.dropAll()
    await this.client.end()
  }
}

/** A plain client on database `name`; `pid` is its backend (to exclude from CPU accounting). */
export const connect = async (name: string, applicationName = "webhook-worker bench"): Promise<{ client: Pg.Client; pid: number }> => {
  const client = new Pg.Client({ connectionString: urlFor(name), application_name: applicationName })
  // DROP DATABASE ... WITH (FORCE) ends it when a pass is cut short: not an error worth a crash.
  client.on("error", () => undefined)
  await client.connect()
  const result = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")
  return { client, pid: result.rows[0]?.pid ?? 0 }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
