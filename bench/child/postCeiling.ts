/**
 * Ceiling: the receiver hammered by a bare keep-alive sign+POST loop, with no queue at all.
 * CONCURRENCY loops share one undici Pool and each builds, signs and sends a fresh body, until
 * REQUESTS have been sent, after WARM_UP requests not measured. Prints one JSON PostCeilingResult line on stdout.
 */
import { envelope, nowMs, type PostCeilingResult, SECRET } from "../lib/common.js"
import { env, makeDeliverer } from "./deliver.js"

const concurrency = Number(env("CONCURRENCY"))
const total = Number(env("REQUESTS"))
const deliverer = makeDeliverer(env("TARGET_URL"), SECRET, concurrency)
/** Requests sent before measuring; exported to the orchestrator through WARM_UP. */
const WARM_UP = Number(env("WARM_UP"))

const main = async () => {
  // Warm up first (connections, JIT), so that the measurement is the steady state.
  let warm = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (warm < WARM_UP) {
      const seq = warm++
      await deliverer.send(`warm_${seq}`, JSON.stringify(envelope(seq)))
    }
  }))
  let next = 0
  let failures = 0
  const cpu0 = process.cpuUsage()
  const t0 = nowMs()
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) {
      const seq = next++
      try {
        await deliverer.send(`ceil_${seq}`, JSON.stringify(envelope(seq)))
      } catch {
        failures++
      }
    }
  }))
  const wallMs = nowMs() - t0
  const cpu = process.cpuUsage(cpu0)
  const result: PostCeilingResult = { requests: total, failures, wallMs, cpuMs: (cpu.user + cpu.system) / 1000 }
  process.stdout.write(JSON.stringify(result) + "\n")
  await deliverer.close()
}

main().catch((error: unknown) => {
  process.stderr.write(String(error) + "\n")
  process.exit(1)
})
