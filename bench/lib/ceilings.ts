/**
 * The machine's ceilings, measured in the same run as the systems:
 * - sign+POST: the receiver hammered by a bare keep-alive sign+POST loop (no queue);
 * - SQL: a bare batched claim + complete loop on our schema (no HTTP): claim B rows with SKIP
 *   LOCKED, then mark them delivered and insert their log rows in one statement.
 */
import { readFileSync } from "node:fs"
import { builtChild, spawnNode } from "./children.js"
import { nowMs, type PostCeilingResult } from "./common.js"
import { type Context, logFile, quietGate, systemOf } from "./context.js"
import { connect } from "./db.js"
import { cpuMsOf, PostgresCpu } from "./proc.js"

export interface PostCeiling {
  readonly repeat: number
  readonly ok: boolean
  readonly error?: string
  readonly requestsPerSec: number | null
  readonly clientCpuMsPerRequest: number | null
  readonly receiverCpuMsPerRequest: number | null
  readonly machineBusyBeforePct: number
}

export const postCeiling = async (ctx: Context, repeat: number): Promise<PostCeiling> => {
  const machineBusyBeforePct = await quietGate(ctx)
  const n = ctx.options.n
  const warmUp = Math.max(ctx.options.concurrency, Math.min(n, 5_000))
  await ctx.receiver.reset(n + warmUp)
  const receiverCpu0 = cpuMsOf(ctx.receiver.child.pid) ?? 0
  const log = logFile(ctx, `ceiling-post-r${repeat}`)
  const child = spawnNode(builtChild("postCeiling"), [], {
    logFile: log,
    ipc: false,
    env: { TARGET_URL: ctx.receiver.url, CONCURRENCY: String(ctx.options.concurrency), REQUESTS: String(n), WARM_UP: String(warmUp) }
  })
  const timer = setTimeout(() => child.process.kill("SIGKILL"), 120_000)
  const code = await child.exited
  clearTimeout(timer)
  const receiverCpu1 = cpuMsOf(ctx.receiver.child.pid) ?? receiverCpu0
  const line = readFileSync(log, "utf8").split("\n").find((l) => l.startsWith("{"))
  if (code !== 0 || line === undefined) {
    return {
      repeat,
      ok: false,
      error: `exit ${code}:\n${child.tail()}`,
      requestsPerSec: null,
      clientCpuMsPerRequest: null,
      receiverCpuMsPerRequest: null,
      machineBusyBeforePct
    }
  }
  const result = JSON.parse(line) as PostCeilingResult
  return {
    repeat,
    ok: result.failures === 0,
    ...(result.failures === 0 ? {} : { error: `${result.failures} requests failed` }),
    requestsPerSec: (result.requests * 1000) / result.wallMs,
    clientCpuMsPerRequest: result.cpuMs / result.requests,
    // Includes the warm-up requests.
    receiverCpuMsPerRequest: (receiverCpu1 - receiverCpu0) / (result.requests + warmUp),
    machineBusyBeforePct
  }
}

export interface SqlCeiling {
  readonly repeat: number
  readonly ok: boolean
  readonly error?: string
  readonly loops: number
  readonly batch: number
  readonly rowsPerSec: number | null
  readonly pgCpuMsPerRow: number | null
  readonly machineBusyBeforePct: number
}

const CLAIM = `
UPDATE webhook_delivery_queue q
SET status = 'processing', locked_by = $1, locked_until = now() + interval '60 seconds',
    next_retry_at = now() + interval '60 seconds', attempt_count = q.attempt_count + 1
FROM (
  SELECT id FROM webhook_delivery_queue
  WHERE status IN ('pending', 'failed', 'processing') AND next_retry_at <= now()
  ORDER BY next_retry_at
  LIMIT $2
  FOR UPDATE SKIP LOCKED
) due
WHERE q.id = due.id
RETURNING q.id::text AS id, q.url, q.secret, q.payload::text AS payload, q.attempt_count`

const COMPLETE = `
WITH done AS (
  UPDATE webhook_delivery_queue
  SET status = 'delivered', delivered_at = now(), locked_by = NULL, locked_until = NULL, last_response_status = 200
  WHERE id = ANY($1::uuid[]) AND locked_by = $2
  RETURNING id, attempt_count
)
INSERT INTO webhook_delivery_log (delivery_id, attempt, outcome, reason, response_status, duration_ms, worker_id)
SELECT id, attempt_count, 'delivered', 'delivered', 200, 1.0, $2 FROM done`

export const sqlCeiling = async (ctx: Context, repeat: number): Promise<SqlCeiling> => {
  const { n, sqlLoops: loops, sqlBatch: batch } = ctx.options
  const machineBusyBeforePct = await quietGate(ctx)
  const database = await ctx.admin.createDatabase("sql_ceiling")
  const base = { repeat, loops, batch, machineBusyBeforePct }
  const clients: Array<Awaited<ReturnType<typeof connect>>> = []
  try {
    const queue = await systemOf(ctx, "ours").open(database, 4)
    await queue.enqueueBulk(0, n)
    await queue.close()
    for (let i = 0; i < loops; i++) clients.push(await connect(database, "webhook-worker bench sql ceiling"))
    const pgCpu = new PostgresCpu(database)
    pgCpu.begin()
    const t0 = nowMs()
    let done = 0
    await Promise.all(clients.map(async ({ client }, loop) => {
      const worker = `sql-ceiling-${loop}`
      for (;;) {
        const claimed = await client.query<{ id: string }>({ name: "bench_claim", text: CLAIM, values: [worker, batch] })
        if (claimed.rows.length === 0) return
        await client.query({ name: "bench_complete", text: COMPLETE, values: [claimed.rows.map((r) => r.id), worker] })
        done += claimed.rows.length
      }
    }))
    const wallMs = nowMs() - t0
    const pg = pgCpu.end()
    return {
      ...base,
      ok: done === n,
      ...(done === n ? {} : { error: `completed ${done} of ${n}` }),
      rowsPerSec: (done * 1000) / wallMs,
      pgCpuMsPerRow: (pg.backendsMs + pg.auxiliaryMs) / Math.max(done, 1)
    }
  } catch (error) {
    return { ...base, ok: false, error: error instanceof Error ? error.message : String(error), rowsPerSec: null, pgCpuMsPerRow: null }
  } finally {
    for (const { client } of clients) await client.end().catch(() => undefined)
    await ctx.admin.dropDatabase(database).catch(() => undefined)
  }
}
