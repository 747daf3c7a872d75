import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import Pg from "pg"
import { describe, expect } from "vitest"
import { admin } from "../utils/TestDatabase.js"
import { databaseUrl } from "../utils/urls.js"
import { keyringOf, repoRoot, runCli, TEST_KEY, withDb } from "./support.js"

/**
 * DEPLOYMENT.md is the operators' manual: these tests run what it says. Every `webhook-worker`
 * command in a shell block runs against a test database (only the host-specific parts are
 * swapped: the env file's path, `sudo`, the database URL, and `ID`); every flag any command in
 * the guide uses exists; every SQL block and `psql -c` line runs.
 */

const guide = readFileSync(join(repoRoot, "DEPLOYMENT.md"), "utf8")

interface Block {
  readonly lang: string
  readonly body: string
}

const blocks: ReadonlyArray<Block> = [...guide.matchAll(/^[ \t]*```(\w*)\n([\s\S]*?)^[ \t]*```/gm)].map((m) => ({
  lang: m[1]!,
  body: m[2]!.replace(/^ {3}/gm, "")
}))

/** Shell lines: continuations joined, comments and blanks dropped. */
const shellLines = (body: string) =>
  body.replace(/\\\n\s*/g, " ").split("\n").map((line) => line.trim()).filter((line) => line !== "" && !line.startsWith("#"))

/** Words of a shell line, quotes removed (enough for the guide's commands). */
const tokenize = (line: string): Array<string> => {
  const tokens: Array<string> = []
  let current = ""
  let quote: string | null = null
  let started = false
  for (const ch of line) {
    if (quote !== null) {
      if (ch === quote) quote = null
      else current += ch
    } else if (ch === "'" || ch === "\"") {
      quote = ch
      started = true
    } else if (/\s/.test(ch)) {
      if (started || current !== "") tokens.push(current)
      current = ""
      started = false
    } else current += ch
  }
  if (started || current !== "") tokens.push(current)
  return tokens
}

interface Invocation {
  readonly line: string
  readonly admin: boolean
  readonly prefix: ReadonlyArray<string>
  readonly args: ReadonlyArray<string>
}

const invocationOf = (line: string): Invocation | undefined => {
  const tokens = tokenize(line)
  const at = tokens.findIndex((token) => token === "webhook-worker" || token === "webhook-worker-admin")
  if (at === -1) return undefined
  const end = tokens.findIndex((token, index) => index > at && ["|", "&&", ";", ")"].includes(token))
  return { line, admin: tokens[at] === "webhook-worker-admin", prefix: tokens.slice(0, at), args: tokens.slice(at + 1, end === -1 ? undefined : end) }
}

const shellInvocations = blocks
  .filter((block) => block.lang === "bash")
  .flatMap((block) => shellLines(block.body))
  .flatMap((line) => invocationOf(line) ?? [])

// Commands written inline in the prose, e.g. `webhook-worker dlq retry --all --endpoint ID`.
const inlineInvocations = [...guide.replace(/^[ \t]*```[\s\S]*?^[ \t]*```/gm, "").matchAll(/`([^`\n]*\bwebhook-worker(?:-admin)? [a-z-][^`\n]*)`/g)]
  .flatMap((m) => invocationOf(m[1]!) ?? [])

const TREE: Record<string, ReadonlyArray<string>> = {
  migrate: [],
  run: [],
  enqueue: [],
  stats: [],
  keygen: [],
  "rotate-key": [],
  cleanup: [],
  dlq: ["list", "retry", "archive"],
  endpoints: ["add", "list", "disable", "enable", "rotate-secret"]
}

/** The subcommand path of an invocation, e.g. ["dlq", "retry"]; fails on one that does not exist. */
const pathOf = (invocation: Invocation): ReadonlyArray<string> => {
  const [first, second] = invocation.args
  if (first === "--version" || first === "--help") return []
  expect(Object.keys(TREE), `unknown command in: ${invocation.line}`).toContain(first)
  const children = TREE[first!]!
  if (children.length === 0) return [first!]
  expect(children, `unknown subcommand in: ${invocation.line}`).toContain(second)
  return [first!, second!]
}

const flagsOf = (invocation: Invocation) =>
  invocation.args.filter((arg) => arg.startsWith("--")).map((arg) => arg.split("=")[0]!)

const stripAnsi = (text: string) => text.replace(/\u001b\[[0-9;]*m/g, "")

describe("DEPLOYMENT.md", () => {
  it("names commands that exist", () => {
    expect(shellInvocations.length).toBeGreaterThan(15)
    expect(inlineInvocations.length).toBeGreaterThan(5)
    for (const invocation of [...shellInvocations, ...inlineInvocations]) pathOf(invocation)
  })

  it("writes every command as it runs on the host: with the env file, a DATABASE_URL, or through webhook-worker-admin", () => {
    // Commands that read no configuration need none of them.
    const standalone = new Set(["", "keygen"])
    for (const invocation of [...shellInvocations, ...inlineInvocations]) {
      if (invocation.admin || standalone.has(pathOf(invocation).join(" "))) continue
      const configured = invocation.args.includes("--env-file") || invocation.prefix.some((word) => word.startsWith("DATABASE_URL="))
      expect(configured, `${invocation.line}: without --env-file it would not reach the service's database`).toBe(true)
      // The env file is readable by www-data only (mode 640, root:www-data).
      // (`run` is the unit's ExecStart: systemd runs it as www-data.)
      if (invocation.args.includes("--env-file") && invocation.args[0] !== "run") {
        expect(invocation.prefix.join(" "), invocation.line).toBe("sudo -u www-data")
      }
    }
  })

  it.live("shows what migrate prints on a fresh database", () =>
    Effect.gen(function*() {
      const step = guide.slice(guide.indexOf("### Step 1: Run Schema Migration"))
      const shown = /Expected output[^\n]*\n(?:(?!```)[^\n]*\n)*?```\n([^\n]+)\n```/.exec(step)
      expect(shown, "Database Setup, Step 1: an expected-output block").not.toBeNull()
      const name = `ww_deploy_mig_${process.pid}_${Date.now().toString(36)}`
      yield* Effect.acquireRelease(
        admin((client) => client.query(`CREATE DATABASE ${name}`)),
        () => admin((client) => client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
      )
      const first = yield* runCli(["migrate"], { DATABASE_URL: databaseUrl(name) })
      expect(first.code, first.stderr).toBe(0)
      expect(first.stdout.trim()).toBe(shown![1])
      // Every file of migrations/, in order (so the guide lists what this version ships).
      const files = readdirSync(join(repoRoot, "migrations")).filter((file) => /^\d+_.*\.sql$/.test(file)).sort()
      expect(shown![1]).toBe(`Applied ${files.map((file) => file.replace(/\.sql$/, "")).join(", ")}.`)
      const again = yield* runCli(["migrate"], { DATABASE_URL: databaseUrl(name) })
      expect(again.stdout.trim()).toBe("Database schema is up to date.")
      expect(guide).toContain("afterwards `Database schema is up to date.`")
    }).pipe(Effect.scoped), 60_000)

  it.live("uses only flags the commands have", () =>
    Effect.gen(function*() {
      const byPath = new Map<string, Set<string>>()
      for (const invocation of [...shellInvocations, ...inlineInvocations]) {
        const key = pathOf(invocation).join(" ")
        const flags = byPath.get(key) ?? new Set<string>()
        for (const flag of flagsOf(invocation)) flags.add(flag)
        byPath.set(key, flags)
      }
      const checks = [...byPath].filter(([path, flags]) => path !== "" && flags.size > 0)
      const helps = yield* Effect.forEach(checks, ([path]) => runCli([...path.split(" "), "--help"]), { concurrency: 3 })
      for (const [index, [path, flags]] of checks.entries()) {
        const help = stripAnsi(helps[index]!.stdout)
        expect(helps[index]!.code, path).toBe(0)
        for (const flag of flags) expect(help, `webhook-worker ${path} ${flag}`).toContain(flag)
      }
    }), 120_000)

  it.live("every webhook-worker command in its shell blocks runs as written", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const dir = mkdtempSync(join(tmpdir(), "ww-deploy-"))
        yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
        // The host's /etc/webhook-worker/webhook-worker.env, for this database.
        const envFile = join(dir, "webhook-worker.env")
        writeFileSync(envFile, `DATABASE_URL=${db.url}\nWEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\nLOG_LEVEL=INFO\n`)

        const sql = yield* SqlClient.SqlClient
        const [endpoint] = yield* sql<{ id: string }>`
          INSERT INTO partner_webhooks (url, secret) VALUES ('https://partner.example/webhooks', ${keyringOf(TEST_KEY).encrypt("whsec_c2VjcmV0")})
          RETURNING id::text AS id`
        const [dead] = yield* sql<{ id: string }>`
          INSERT INTO webhook_delivery_queue (url, secret, event_type, payload, status, "updatedAt")
          VALUES ('https://partner.example/x', 'test_secret', 'call.completed', '{}', 'dead_letter', now() - interval '40 days')
          RETURNING id::text AS id`

        const ran: Array<string> = []
        for (const invocation of shellInvocations) {
          const retryOne = invocation.args[0] === "dlq" && invocation.args[1] === "retry" && !invocation.args.includes("--all")
          const args = invocation.args.map((arg) =>
            arg === "/etc/webhook-worker/webhook-worker.env" ? envFile : arg === "ID" ? (retryOne ? dead!.id : endpoint!.id) : arg
          )
          // webhook-worker-admin = the env file plus the owner's DATABASE_URL (the same database here).
          if (invocation.admin) args.push("--env-file", envFile)
          const env: Record<string, string> = {}
          for (const word of invocation.prefix) {
            const assignment = /^([A-Z_]+)=/.exec(word)
            if (assignment) env[assignment[1]!] = assignment[1] === "DATABASE_URL" ? db.url : word.slice(assignment[0].length)
          }
          const result = yield* runCli(args, env)
          expect(result.code, `${invocation.line}\n${result.stdout}\n${result.stderr}`).toBe(0)
          ran.push(args.slice(0, 2).join(" "))
        }
        // The guide exercises each command at least once.
        for (const command of ["migrate", "keygen", "stats", "enqueue", "dlq list", "dlq retry", "dlq archive", "cleanup", "rotate-key",
          "endpoints add", "endpoints list", "endpoints disable", "endpoints enable", "endpoints rotate-secret"]) {
          expect(ran.some((r) => r === command || r.startsWith(`${command} `)), command).toBe(true)
        }
        // Verification, Step 3: the test delivery is queued.
        expect(yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM webhook_delivery_queue WHERE url = 'https://webhook.site/test'`)
          .toEqual([{ n: 1 }])
      })), 240_000)

  it.live("its SQL blocks and psql lines run; its GRANTs are the ones sql/roles.sql makes", () =>
    withDb((db) =>
      Effect.scoped(Effect.gen(function*() {
        const roles = readFileSync(join(repoRoot, "sql", "roles.sql"), "utf8")
        const client = new Pg.Client({ connectionString: db.url })
        yield* Effect.acquireRelease(Effect.promise(() => client.connect()), () => Effect.promise(() => client.end()))
        const sqlBlocks = blocks.filter((block) => block.lang === "sql")
        expect(sqlBlocks.length).toBeGreaterThan(8)
        for (const block of sqlBlocks) {
          if (/\bGRANT\b/.test(block.body)) {
            for (const grant of block.body.split("\n").filter((line) => /^(GRANT|REVOKE) /.test(line))) expect(roles).toContain(grant)
            continue
          }
          const ok = yield* Effect.promise(() => client.query(block.body).then(() => "ok", (error: Error) => error.message))
          expect(ok, block.body).toBe("ok")
        }

        const psqlLines = blocks
          .filter((block) => block.lang === "bash")
          .flatMap((block) => shellLines(block.body))
          .filter((line) => /\bpsql\b/.test(line) && !line.includes(" -f ") && !line.includes("\\password"))
        expect(psqlLines.length).toBeGreaterThan(4)
        const name = new URL(db.url).pathname.slice(1)
        for (const line of psqlLines) {
          const local = line
            .replace(/PGPASSWORD="[^"]*"/, `PGPASSWORD="${new URL(db.url).password}"`)
            .replace("-h localhost", `-h ${new URL(db.url).hostname} -p ${new URL(db.url).port || "5432"}`)
            .replace("-d epic_voice_db", `-d ${name}`)
          const result = spawnSync("sh", ["-c", local], { encoding: "utf8" })
          expect(result.status, `${line}\n${result.stderr}`).toBe(0)
          if (line.includes("\\dt")) {
            for (const table of ["partner_webhooks", "webhook_dead_letter_archive", "webhook_delivery_log", "webhook_delivery_queue", "webhook_worker_migrations"]) {
              expect(result.stdout).toContain(table)
            }
          }
          if (line.includes("\\di")) {
            for (const index of ["idx_wdq_dead_letter", "idx_wdq_delivered_at", "idx_wdq_due", "idx_wdq_idempotency", "idx_wdq_partner"]) {
              expect(result.stdout).toContain(index)
            }
          }
        }
      }))), 120_000)
})

describe("the published package", () => {
  it("holds what an install from the registry runs: the built CLI, migrations, role SQL, systemd units and the guide", () => {
    const packed = spawnSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: repoRoot, encoding: "utf8" })
    expect(packed.status, packed.stderr).toBe(0)
    const files = (JSON.parse(packed.stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((file) => file.path)
    const migrations = readdirSync(join(repoRoot, "migrations")).filter((file) => file.endsWith(".sql")).map((file) => `migrations/${file}`)
    expect(files).toEqual(expect.arrayContaining([
      "bin/webhook-worker.js",
      "dist/main.js",
      "dist/index.js",
      "dist/index.d.ts",
      "dist/host/Receiver.js",
      ...migrations,
      "sql/roles.sql",
      "systemd/webhook-worker@.service",
      "systemd/webhook-worker.target",
      "systemd/webhook-worker.env.example",
      "systemd/install.sh",
      "DEPLOYMENT.md",
      ".env.example"
    ]))
    // Sources, tests and the benchmark stay out of it.
    expect(files.filter((file) => /^(src|test|bench|scratch)\//.test(file))).toEqual([])
  })
})
