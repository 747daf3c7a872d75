import { it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Redacted } from "effect"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect } from "vitest"
import { freePort } from "../utils/Ports.js"
import { makeReceiver } from "../utils/Receiver.js"
import { testDatabase } from "../utils/TestDatabase.js"
import { eventually, statusIs, TEST_KEY } from "../utils/WorkerHarness.js"
import { enqueue, get, makeCollector, parseSamples, request, waitFor } from "./support.js"

/**
 * The real `webhook-worker` binary (`npm test` builds `dist/` first): what `runWorker` wires
 * together, seen from outside the process.
 */
const root = join(import.meta.dirname, "..", "..")
const command = (args: ReadonlyArray<string>) => [process.execPath, [join(root, "bin", "webhook-worker.js"), ...args]] as const

const childEnv = (env: Record<string, string>) => ({ PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env })

/** Runs a command to completion. */
const runCommand = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.async<{ code: number | null; stdout: string; stderr: string }>((resume) => {
    const [bin, argv] = command(args)
    const child = spawn(bin, argv, { cwd: root, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    return Effect.sync(() => void child.kill("SIGKILL"))
  })

/** Starts a long-running command; its stdout lines are collected; killed at the end of the scope. */
const startCommand = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const [bin, argv] = command(args)
      const child = spawn(bin, argv, { cwd: root, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] })
      const lines: Array<string> = []
      let partial = ""
      let stderr = ""
      child.stdout.on("data", (chunk: Buffer) => {
        const parts = (partial + chunk.toString()).split("\n")
        partial = parts.pop() ?? ""
        lines.push(...parts)
      })
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
      const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))
      return { child, lines, stderr: () => stderr, exited: Effect.promise(() => exited) }
    }),
    ({ child }) => Effect.sync(() => void (child.exitCode === null && child.kill("SIGKILL")))
  )


const hex = (bytes: number) => randomBytes(bytes).toString("hex")

describe("webhook-worker run (a real process)", () => {
  it.live(
    "serves metrics on METRICS_PORT + N - 1, exports traces linked to the enqueuing command's TRACEPARENT, logs its instance, reloads LOG_LEVEL on SIGHUP; a taken port fails in one line",
    () =>
      Effect.gen(function*() {
        const database = yield* testDatabase
        const collector = yield* makeCollector
        const receiver = yield* makeReceiver
        const port = yield* freePort
        const envFile = join(mkdtempSync(join(tmpdir(), "ww-obs-")), "worker.env")
        writeFileSync(envFile, "LOG_LEVEL=WARN\n")
        const env = {
          DATABASE_URL: database.url,
          WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
          WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
          WORKER_POLL_INTERVAL: "0.2",
          METRICS_PORT: String(port - 1),
          OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
          OTEL_SERVICE_NAME: "ww-process-test",
          OTEL_BSP_SCHEDULE_DELAY: "100"
        }

        const worker = yield* startCommand(["run", "--instance", "2", "--env-file", envFile], env)
        const metricsUrl = `http://127.0.0.1:${port}`
        yield* waitFor(
          Effect.map(request(`${metricsUrl}/readyz`).pipe(Effect.option), (r) => (r._tag === "Some" && r.value.status === 200 ? true : undefined)),
          `the worker's /readyz on port ${port}`,
          45_000
        )

        // A calling process's trace context, handed over the W3C way (an environment variable).
        const producer = { traceId: hex(16), spanId: hex(8) }
        const enqueued = yield* runCommand(
          ["enqueue", "--url", receiver.url(), "--secret", "whsec_cHJvY2Vzcy10ZXN0", "--event-type", "order.created", "--payload", `{"n":1}`],
          { ...env, TRACEPARENT: `00-${producer.traceId}-${producer.spanId}-01` }
        )
        expect(enqueued.stderr).toBe("")
        expect(enqueued.code).toBe(0)
        const first = enqueued.stdout.trim()

        yield* Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const [row] = yield* sql<{ traceparent: string }>`SELECT traceparent FROM webhook_delivery_queue WHERE id = ${first}`
          expect(row!.traceparent).toBe(`00-${producer.traceId}-${producer.spanId}-01`)
          yield* eventually(statusIs(first, "delivered"), "first delivery", 20_000)
          // LOG_LEVEL=WARN from the env file: the attempt was not logged.
          expect(worker.lines.filter((l) => l.includes("Delivering webhook"))).toEqual([])

          writeFileSync(envFile, "LOG_LEVEL=INFO\n")
          worker.child.kill("SIGHUP")
          yield* waitFor(Effect.sync(() => worker.lines.find((l) => l.includes("Configuration reloaded"))), "the reload line")
          const second = yield* enqueue({ url: receiver.url() })
          yield* eventually(statusIs(second, "delivered"), "second delivery", 20_000)
          const line = yield* waitFor(Effect.sync(() => worker.lines.find((l) => l.includes("Delivering webhook"))), "an attempt line")
          const parsed = JSON.parse(line) as Record<string, unknown>
          expect(parsed).toMatchObject({ msg: "Delivering webhook", instance: 2, delivery_id: second, attempt: 1, outcome: "delivered" })
          expect(parsed.trace_id).toMatch(/^[0-9a-f]{32}$/)
          for (const l of worker.lines) expect(JSON.parse(l)).toMatchObject({ instance: 2 })
        }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(database.url), maxConnections: 2 })), Effect.orDie)

        const metrics = parseSamples((yield* get(`${metricsUrl}/metrics`)).body)
        expect(metrics.filter((s) => s.name === "webhooks_delivered_total").reduce((sum, s) => sum + s.value, 0)).toBe(2)
        expect(metrics.some((s) => s.name === "process_resident_memory_bytes")).toBe(true)
        expect((yield* get(`${metricsUrl}/healthz`)).status).toBe(200)

        // The delivery span reached the collector, under the enqueuer's span; the receiver got its id.
        const deliver = yield* waitFor(
          Effect.sync(() => collector.spans().find((s) => s.span.name === "webhook.deliver" && s.attributes["webhook.id"] === first)),
          "the delivery span at the collector",
          10_000
        )
        expect(deliver.resource["service.name"]).toBe("ww-process-test")
        expect(deliver.resource["service.instance.id"]).toMatch(/:2$/)
        expect(deliver.span.traceId).toBe(producer.traceId)
        expect(deliver.span.parentSpanId).toBe(producer.spanId)
        expect(receiver.requests[0]!.headers.traceparent).toBe(`00-${producer.traceId}-${deliver.span.spanId}-01`)

        // Same instance again while the first runs: one line naming the variable, exit status 2.
        const duplicate = yield* runCommand(["run", "--instance", "2"], env)
        expect(duplicate.code).toBe(2)
        expect(duplicate.stderr.trim().split("\n")).toEqual([
          `webhook-worker: METRICS_PORT: 127.0.0.1:${port} is already in use (this instance listens on METRICS_PORT + 1, for --instance 2); stop the other process or choose another METRICS_PORT`
        ])

        const bad = yield* runCommand(
          ["enqueue", "--url", receiver.url(), "--secret", "s", "--event-type", "t", "--payload", "{}"],
          { ...env, TRACEPARENT: "not-a-traceparent" }
        )
        expect(bad.code).toBe(2)
        expect(bad.stderr).toMatch(/^webhook-worker: TRACEPARENT: must be a W3C traceparent/)

        worker.child.kill("SIGTERM")
        expect(yield* worker.exited).toBe(0)
        expect(worker.lines.some((l) => l.includes("Worker stopped"))).toBe(true)
      }).pipe(Effect.scoped),
    120_000
  )
})
