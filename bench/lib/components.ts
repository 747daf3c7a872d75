/**
 * Where our worker's CPU goes per delivery, without PostgreSQL in the picture: the same delivery
 * done by progressively more of the product, in this (the orchestrator's) process, against the
 * same receiver. CPU per delivery is process CPU over the measured deliveries (after a warm-up).
 *
 *  1. bare:        sign + POST with an undici Pool (what the peers' task does)
 *  2. client-text: @effect/platform's HttpClient over an undici Agent (NodeHttpClient.makeUndici),
 *                  the body read with `response.text`: the client the product measured and left
 *  3. http:        the product's DeliveryHttp.send: undici's dispatcher with the product's reply
 *                  handler (body capped at 64 KiB, its own timer), one Effect run per request
 *  4. worker:      the product's Worker.layer (claim pipeline, signer, DeliveryHttp, metrics,
 *                  the per-attempt log line, group-commit Completer) on an in-memory queue that
 *                  answers claims and completions after 1 ms, as a database round trip would
 *  5. worker-warn: the same with LOG_LEVEL=WARN (no per-attempt log line)
 *  6. worker-bare: the same with no-op metrics as well
 * Differences between the rows are the cost of each layer of the product.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { type Context, Effect, Exit, Layer, ManagedRuntime, Option, Redacted, Scope } from "effect"
import { closeSync, openSync, writeSync } from "node:fs"
import { Agent } from "undici"
import { defaults, Settings } from "../../src/config/AppConfig.js"
import { Keyring } from "../../src/crypto/Keyring.js"
import * as DeliveryHttp from "../../src/http/DeliveryHttp.js"
import * as Log from "../../src/observability/Log.js"
import { Metrics, type WorkerMetrics } from "../../src/observability/Metrics.js"
import * as MetricsModule from "../../src/observability/Metrics.js"
import { type ClaimedDelivery, DeliveryQueue } from "../../src/queue/DeliveryQueue.js"
import { uuidv7 } from "../../src/queue/Enqueue.js"
import { signatureHeader } from "../../src/signing/Signer.js"
import * as Wakeup from "../../src/worker/Wakeup.js"
import * as Worker from "../../src/worker/Worker.js"
import { makeDeliverer } from "../child/deliver.js"
import { envelope, EVENT_TYPE, eventData, SECRET } from "./common.js"
import type { Context as BenchContext } from "./context.js"
import { quietGate } from "./context.js"
import { ENCRYPTION_KEY } from "./systems.js"

export interface ComponentResult {
  readonly name: string
  readonly description: string
  readonly deliveries: number
  readonly cpuMsPerDelivery: number
  readonly perSec: number
}

const measure = async (count: number, run: (count: number, offset: number) => Promise<void>) => {
  await run(Math.max(500, Math.floor(count / 4)), 10_000_000)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await run(count, 0)
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  return { cpuMsPerDelivery: (cpu.user + cpu.system) / 1000 / count, perSec: (count * 1000) / wall }
}

/** Runs `task` for 0..count-1 with at most `concurrency` at a time. */
const pool = async (count: number, concurrency: number, task: (i: number) => Promise<void>) => {
  let next = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) await task(next++)
  }))
}

const noopMetrics = new Proxy({}, { get: () => () => 0 }) as unknown as WorkerMetrics

type QueueService = Context.Tag.Service<typeof DeliveryQueue>

/** Delivers `count` rows through the product's Worker.layer on an in-memory queue. */
const workerRun = (
  url: string,
  concurrency: number,
  batchSize: number,
  level: "INFO" | "WARN",
  realMetrics: boolean,
  logFd: number
) =>
async (count: number, offset: number) => {
  const keyring = new Keyring(Buffer.from(ENCRYPTION_KEY, "base64"), [])
  const rows: Array<ClaimedDelivery> = Array.from({ length: count }, (_, i) => ({
    id: uuidv7(),
    userId: null,
    endpointId: null,
    endpointEnabled: null,
    url,
    secret: keyring.encrypt(SECRET),
    secretFromRow: true,
    previousSecret: null,
    eventType: EVENT_TYPE,
    payload: JSON.stringify(eventData(offset + i)),
    createdAtMs: Date.now(),
    attempt: 1,
    maxAttempts: 5,
    traceparent: null,
    reclaimed: false,
    exhausted: false
  }))
  let claimedUpTo = 0
  let completed = 0
  let finish: () => void = () => undefined
  const done = new Promise<void>((resolve) => {
    finish = resolve
  })
  const roundTrip = <A>(f: () => A) => Effect.sleep("1 millis").pipe(Effect.zipRight(Effect.sync(f)))
  const queue: QueueService = {
    claim: (_worker, limit) =>
      roundTrip(() => {
        const batch = rows.slice(claimedUpTo, claimedUpTo + limit)
        claimedUpTo += batch.length
        return batch
      }),
    complete: (_worker, completions) =>
      roundTrip(() => {
        completed += completions.length
        if (completed >= count) finish()
        return new Set(completions.map((c) => c.id))
      }),
    release: () => Effect.void,
    storeSecrets: () => Effect.void,
    nextDueInMs: Effect.succeed(null),
    warmUp: () => Effect.void
  }
  const settings = {
    ...defaults,
    encryptionKey: Option.some(Redacted.make(ENCRYPTION_KEY)),
    allowPrivateNetworks: true,
    maxConcurrentDeliveries: concurrency,
    batchSize,
    pollIntervalMs: 20
  }
  const app = Worker.layer.pipe(
    Layer.provide(Layer.mergeAll(
      Layer.succeed(DeliveryQueue, queue),
      DeliveryHttp.layer,
      Wakeup.polling,
      realMetrics ? MetricsModule.layer({ tenantLabels: true, processMetrics: true }) : Layer.succeed(Metrics, noopMetrics),
      Worker.WorkerIdentity.layer(1),
      Settings.layer(settings)
    )),
    // The product's own batching in front of the file, as in front of standard output.
    Layer.provide(Log.layer("json", new Log.LogThreshold(level), Log.batchedOutput((text) => writeSync(logFd, text))))
  )
  const scope = Effect.runSync(Scope.make())
  await Effect.runPromise(Layer.buildWithScope(app, scope))
  await done
  await Effect.runPromise(Scope.close(scope, Exit.void))
}

export const components = async (ctx: BenchContext): Promise<ReadonlyArray<ComponentResult>> => {
  const count = ctx.options.n
  const concurrency = ctx.options.concurrency
  const url = ctx.receiver.url
  const results: Array<ComponentResult> = []
  const logFd = openSync("/dev/null", "w")
  const record = async (name: string, description: string, run: (count: number, offset: number) => Promise<void>) => {
    await quietGate(ctx)
    await ctx.receiver.reset(Number.MAX_SAFE_INTEGER)
    const measured = await measure(count, run)
    results.push({ name, description, deliveries: count, ...measured })
    ctx.log(`  components ${name}: ${measured.cpuMsPerDelivery.toFixed(3)} ms CPU/delivery, ${Math.round(measured.perSec)}/s`)
  }
  try {
    const bare = makeDeliverer(url, SECRET, concurrency)
    await record("bare", "sign + POST, undici Pool (the peers' task)", (n, offset) =>
      pool(n, concurrency, (i) => bare.send(`bare_${offset + i}`, JSON.stringify(envelope(offset + i)))))
    await bare.close()

    // The platform client, for comparison with the product's own dispatch (src/http/DeliveryHttp.ts).
    const agent = new Agent({ connect: { timeout: 60_000 }, keepAliveTimeout: 30_000, pipelining: 1 })
    const client = NodeHttpClient.makeUndici(agent).pipe(
      HttpClient.withTracerPropagation(false),
      HttpClient.withTracerDisabledWhen(() => true)
    )
    await record("client-text", "@effect/platform HttpClient over an undici Agent, body read with response.text (for comparison: the product does not use it)", (n, offset) =>
      pool(n, concurrency, async (i) => {
        const id = `text_${offset + i}`
        const body = JSON.stringify(envelope(offset + i))
        const timestamp = Math.floor(Date.now() / 1000)
        const request = HttpClientRequest.post(url).pipe(
          HttpClientRequest.setHeaders({ "webhook-id": id, "webhook-timestamp": String(timestamp), "webhook-signature": signatureHeader([SECRET], id, timestamp, body) }),
          HttpClientRequest.bodyText(body, "application/json")
        )
        await Effect.runPromise(client.execute(request).pipe(Effect.flatMap((response) => response.text), Effect.scoped))
      }))
    await agent.close()

    const http = ManagedRuntime.make(DeliveryHttp.layer)
    const send = await http.runPromise(DeliveryHttp.DeliveryHttp)
    await record("http", "DeliveryHttp.send: undici dispatch with the product's handler (body capped at 64 KiB, timer, SSRF-guarded agent), run as an Effect per request", (n, offset) =>
      pool(n, concurrency, async (i) => {
        const id = `http_${offset + i}`
        const body = JSON.stringify(envelope(offset + i))
        const timestamp = Math.floor(Date.now() / 1000)
        await Effect.runPromise(send.send({
          url,
          body,
          timeoutMs: 15_000,
          allowPrivateNetworks: true,
          headers: { "webhook-id": id, "webhook-timestamp": String(timestamp), "webhook-signature": signatureHeader([SECRET], id, timestamp, body) }
        }))
      }))
    await http.dispose()

    const batch = ctx.options.batchSize ?? ctx.options.concurrency
    await record("worker", "Worker.layer on an in-memory queue (1 ms round trips), LOG_LEVEL=INFO", workerRun(url, concurrency, batch, "INFO", true, logFd))
    await record("worker-warn", "the same, LOG_LEVEL=WARN (no per-attempt log line)", workerRun(url, concurrency, batch, "WARN", true, logFd))
    await record("worker-bare", "the same, LOG_LEVEL=WARN and no-op metrics", workerRun(url, concurrency, batch, "WARN", false, logFd))
  } finally {
    closeSync(logFd)
  }
  return results
}
