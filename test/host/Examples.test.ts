import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { Effect, Exit, Scope } from "effect"
import Pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import { verifyWebhook } from "../../src/index.js"
import { makeReceiver } from "../utils/Receiver.js"
import { testDatabase } from "../utils/TestDatabase.js"
import { TEST_KEY, waitFor } from "./fixtures.js"

const root = fileURLToPath(new URL("../..", import.meta.url))
const PARTNER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

interface Running {
  readonly child: ChildProcess
  readonly output: () => string
  readonly baseUrl: string
  readonly exited: Promise<number | null>
}

const children: Array<ChildProcess> = []
afterEach(() => {
  // A failed test must not leave an example running.
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill("SIGKILL")
})

/** Starts an example the way its README says (tsx), and waits for its "Listening on" line. */
const start = async (file: string, env: Record<string, string>): Promise<Running> => {
  const child = spawn(process.execPath, ["--import", "tsx", file], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  children.push(child)
  let output = ""
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  const baseUrl = await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`${file} exited with ${child.exitCode}:\n${output}`)
    return /Listening on (http:\/\/[0-9.]+:\d+)/.exec(output)?.[1]
  }, `${file} to listen`, 45_000)
  return { child, output: () => output, baseUrl, exited }
}

const post = async (url: string, body: unknown) => {
  const response = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

const count = async (url: string, table: string) => {
  const client = new Pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0]!.n
  } finally {
    await client.end()
  }
}

const exampleRun = (file: string, extraEnv: Record<string, string>, check?: (running: Running) => Promise<void>) => async () => {
  const scope = Effect.runSync(Scope.make())
  try {
    const { url } = await Effect.runPromise(Scope.extend(testDatabase, scope))
    const receiver = await Effect.runPromise(Scope.extend(makeReceiver, scope))
    const running = await start(file, {
      DATABASE_URL: url,
      WEBHOOK_SECRET_ENCRYPTION_KEY: TEST_KEY,
      PARTNER_URL: receiver.url("/partner/orders"),
      PARTNER_SECRET,
      PORT: "0",
      WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
      ...extraEnv
    })

    // An order commits with its webhook, which the in-process worker delivers, signed.
    const created = await post(`${running.baseUrl}/orders`, { customer: "ada", totalCents: 4200 })
    expect(created.status, running.output()).toBe(201)
    await waitFor(async () => receiver.requests.length === 1 || undefined, "the order.created delivery", 15_000)
    const [request] = receiver.requests
    expect(request!.headers["webhook-id"]).toBe(created.body.webhookId)
    const event = verifyWebhook(PARTNER_SECRET, request!.headers, request!.body)
    expect(event).toMatchObject({ type: "order.created", data: { orderId: created.body.orderId, customer: "ada", totalCents: 4200 } })

    // A failed order takes its webhook with it.
    const declined = await post(`${running.baseUrl}/orders`, { customer: "bob", totalCents: 1, declinePayment: true })
    expect(declined.status).toBe(402)
    expect(await count(url, "example_orders")).toBe(1)
    expect(await count(url, "webhook_delivery_queue")).toBe(1)

    if (check) await check(running)

    // SIGTERM: a clean exit after the worker has drained.
    running.child.kill("SIGTERM")
    const code = await Promise.race([running.exited, new Promise((resolve) => setTimeout(() => resolve("timeout"), 20_000))])
    expect(code, running.output()).toBe(0)
    expect(receiver.requests).toHaveLength(1)
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

describe("examples", () => {
  it(
    "effect-host: Effect HttpServer, enqueue in the order's transaction, worker in-process",
    exampleRun("examples/effect-host/main.ts", { WORKER_POLL_INTERVAL: "0.2" }, async (running) => {
      // The worker's metrics are in the app's own registry, served by the app.
      const metrics = await (await fetch(`${running.baseUrl}/metrics`)).text()
      expect(metrics).toMatch(/^webhooks_delivered_total\{[^}]*\} 1$/m)
    }),
    90_000
  )

  it("node-host: Promise API in a pg transaction, plain node:http", exampleRun("examples/node-host/server.ts", {}), 90_000)
})
