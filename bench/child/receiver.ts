/**
 * The webhook receiver, in its own process on 127.0.0.1: keep-alive, a tiny 200 response, unique
 * `webhook-id`s counted, one request in `SAMPLE_EVERY` verified with the reference Standard
 * Webhooks library. Driven by the orchestrator over IPC (see ReceiverCommand in lib/common.ts).
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { Webhook } from "standardwebhooks"
import { nowMs, type ReceiverCommand, type ReceiverEvent, type ReceiverStats, type Reply, SECRET } from "../lib/common.js"

const SAMPLE_EVERY = 50
const verifier = new Webhook(SECRET)

let ids = new Set<string>()
let requests = 0
let duplicates = 0
let missingId = 0
let signaturesChecked = 0
let signaturesFailed = 0
let firstAt = 0
let lastAt = 0
let inFlight = 0
let maxInFlight = 0
let target = Number.POSITIVE_INFINITY
let reached = false
let delayMs = 0
let seqTimes: Float64Array = new Float64Array(0)

const send = (message: ReceiverEvent | Reply<unknown>) => {
  process.send?.(message)
}

const SEQ = /"seq":(\d+)/

const server = createServer({ keepAlive: true, noDelay: true }, (req, res) => {
  inFlight++
  if (inFlight > maxInFlight) maxInFlight = inFlight
  const chunks: Array<Buffer> = []
  req.on("data", (chunk: Buffer) => chunks.push(chunk))
  req.on("end", () => {
    const at = nowMs()
    requests++
    const header = req.headers["webhook-id"]
    const id = typeof header === "string" ? header : undefined
    if (id === undefined) {
      missingId++
    } else if (ids.has(id)) {
      duplicates++
    } else {
      ids.add(id)
      if (firstAt === 0) {
        firstAt = at
        send({ event: "first", at })
      }
      lastAt = at
      if (!reached && ids.size >= target) {
        reached = true
        send({ event: "reached", at })
      }
    }
    if (seqTimes.length > 0 || requests % SAMPLE_EVERY === 0) {
      const body = Buffer.concat(chunks)
      if (seqTimes.length > 0) {
        const match = SEQ.exec(body.toString("latin1"))
        const seq = match === null ? -1 : Number(match[1])
        if (seq >= 0 && seq < seqTimes.length && seqTimes[seq] === 0) seqTimes[seq] = at
      }
      if (requests % SAMPLE_EVERY === 0) {
        signaturesChecked++
        try {
          verifier.verify(body, {
            "webhook-id": id ?? "",
            "webhook-timestamp": String(req.headers["webhook-timestamp"] ?? ""),
            "webhook-signature": String(req.headers["webhook-signature"] ?? "")
          }, { jsonParse: false })
        } catch {
          signaturesFailed++
        }
      }
    }
    const respond = () => {
      inFlight--
      res.writeHead(200, { "content-type": "text/plain", "content-length": "2" })
      res.end("ok")
    }
    if (delayMs > 0) setTimeout(respond, delayMs)
    else respond()
  })
})
server.keepAliveTimeout = 60_000
server.headersTimeout = 65_000
server.maxRequestsPerSocket = 0

const stats = (): ReceiverStats => {
  const cpu = process.cpuUsage()
  return {
    unique: ids.size,
    requests,
    duplicates,
    missingId,
    signaturesChecked,
    signaturesFailed,
    firstAt,
    lastAt,
    maxInFlight,
    cpuMs: (cpu.user + cpu.system) / 1000
  }
}

process.on("message", (raw: { readonly id: number } & ReceiverCommand) => {
  switch (raw.cmd) {
    case "reset":
      ids = new Set()
      requests = duplicates = missingId = signaturesChecked = signaturesFailed = 0
      firstAt = lastAt = 0
      maxInFlight = inFlight
      target = raw.target
      reached = false
      delayMs = raw.delayMs
      seqTimes = new Float64Array(raw.recordSeqs)
      send({ id: raw.id, result: stats() })
      break
    case "stats":
      send({ id: raw.id, result: stats() })
      break
    case "seqTimes":
      send({ id: raw.id, result: Array.from(seqTimes) })
      break
  }
})

// The orchestrator going away ends the receiver too (the run is bounded even if it crashes).
process.on("disconnect", () => process.exit(0))

server.listen(0, "127.0.0.1", () => {
  send({ event: "listening", port: (server.address() as AddressInfo).port })
})
