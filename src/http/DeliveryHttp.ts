import { Context, Effect, Layer, Option } from "effect"
import { Agent, type Dispatcher } from "undici"
import {
  type AttemptOutcome,
  classifyStatus,
  ConnectionFailed,
  DeliveryTimeout,
  DestinationBlocked,
  DnsFailed,
  InvalidUrl
} from "../delivery/Outcome.js"
import { parseRetryAfter } from "../delivery/RetryPolicy.js"
import { BlockedAddressError, blockedReason, guardedLookup, literalAddress } from "./DestinationGuard.js"

/** At most this much of a response body is kept (for the audit log); the rest is not read. */
export const RESPONSE_BODY_LIMIT = 64 * 1024

export interface HttpAttempt {
  readonly url: string
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
  readonly timeoutMs: number
  readonly allowPrivateNetworks: boolean
}

export interface HttpReply {
  readonly outcome: AttemptOutcome
  /** Up to RESPONSE_BODY_LIMIT bytes of the body, when there was a response. */
  readonly responseBody: string | null
}

/** Sends one signed webhook request. Never fails: every failure is an outcome. */
export class DeliveryHttp extends Context.Tag("webhook-worker/DeliveryHttp")<DeliveryHttp, {
  readonly send: (attempt: HttpAttempt) => Effect.Effect<HttpReply>
}>() {}

/** A URL we are willing to send to: http(s), a host, and (unless allowed) not a private literal IP. */
export const checkUrl = (raw: string, allowPrivate: boolean): URL | InvalidUrl | DestinationBlocked => {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    // The text stays out of the message (it reaches logs); the row's url column has it.
    return new InvalidUrl({ reason: "not a valid URL" })
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return new InvalidUrl({ reason: `scheme ${url.protocol.slice(0, -1)} is not http or https` })
  }
  if (url.hostname === "") return new InvalidUrl({ reason: "no host" })
  if (!allowPrivate) {
    const literal = literalAddress(url.hostname)
    if (Option.isSome(literal)) {
      const reason = blockedReason(literal.value)
      if (Option.isSome(reason)) {
        return new DestinationBlocked({ hostname: url.hostname, address: literal.value, range: reason.value })
      }
    }
  }
  return url
}

/** The URL with any user:password removed, for logs and errors. */
export const redactUrl = (raw: string): string => raw.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/i, "$1***@")

const errorCode = (cause: unknown): { code: string; message: string; blocked?: BlockedAddressError } => {
  // Walk the cause chain: undici wraps socket errors, and a guarded lookup failure sits below.
  let current: unknown = cause
  for (let depth = 0; depth < 6 && current !== null && typeof current === "object"; depth++) {
    if (current instanceof BlockedAddressError) return { code: current.code, message: current.message, blocked: current }
    const code = (current as { code?: unknown }).code
    if (typeof code === "string" && code !== "") {
      return { code, message: (current as { message?: string }).message ?? code }
    }
    current = (current as { cause?: unknown }).cause
  }
  return { code: "UNKNOWN", message: cause instanceof Error ? cause.message : String(cause) }
}

const DNS_CODES = new Set(["ENOTFOUND", "EAI_AGAIN", "EAI_FAIL", "EAI_NODATA", "EAI_NONAME"])

/** The outcome of a request that got no response. */
export const transportOutcome = (url: URL, cause: unknown): AttemptOutcome => {
  const { blocked, code, message } = errorCode(cause)
  if (blocked !== undefined) {
    return new DestinationBlocked({ hostname: blocked.hostname, address: blocked.address, range: blocked.reason })
  }
  if (DNS_CODES.has(code)) return new DnsFailed({ hostname: url.hostname, code })
  return new ConnectionFailed({ code, detail: message })
}

/** Up to RESPONSE_BODY_LIMIT bytes of a response body; a longer body is cut off (its socket closed). */
const readCapped = async (response: Dispatcher.ResponseData): Promise<string> => {
  const body = response.body
  const declared = Number(response.headers["content-length"])
  // The usual case, a short body of known length: read it whole, no async iterator.
  if (Number.isInteger(declared) && declared <= RESPONSE_BODY_LIMIT) {
    try {
      return await body.text()
    } catch {
      return ""
    }
  }
  const chunks: Array<Buffer> = []
  let size = 0
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      chunks.push(chunk)
      size += chunk.length
      if (size >= RESPONSE_BODY_LIMIT) {
        body.destroy()
        break
      }
    }
  } catch {
    // The status decided the outcome already; a body cut short is no reason to fail the attempt.
  }
  const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)
  return all.subarray(0, RESPONSE_BODY_LIMIT).toString("utf8")
}

const retryAfterOf = (headers: Dispatcher.ResponseData["headers"]) => () => {
  const value = headers["retry-after"]
  return parseRetryAfter(Array.isArray(value) ? value[0] : value, Date.now())
}

/**
 * One POST, connect to last byte under `timeoutMs`, on an undici Agent (keep-alive pools per
 * origin; redirects are not followed: undici's default). Plain undici on purpose: measured on
 * this workload, the platform HttpClient and a Stream-read body cost ~1 ms of CPU per delivery,
 * over 15× the request itself; this is the hot path of every delivery.
 */
const post = (agent: Agent, url: URL, attempt: HttpAttempt): Effect.Effect<HttpReply> =>
  Effect.async<HttpReply>((resume) => {
    const controller = new AbortController()
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      controller.abort()
    }, attempt.timeoutMs)
    const headers: Record<string, string> = { ...attempt.headers, "content-type": "application/json" }
    if (url.username !== "" || url.password !== "") {
      const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`
      headers.authorization = `Basic ${Buffer.from(credentials).toString("base64")}`
    }
    agent.request({
      origin: url.origin,
      path: url.pathname + url.search,
      method: "POST",
      headers,
      body: attempt.body,
      signal: controller.signal,
      // The timer above bounds the whole attempt; undici's own timeouts are only backstops.
      headersTimeout: attempt.timeoutMs + 1000,
      bodyTimeout: attempt.timeoutMs + 1000
    }).then(
      async (response) => {
        const responseBody = await readCapped(response)
        clearTimeout(timer)
        if (timedOut) return resume(Effect.succeed(timeoutReply(attempt)))
        resume(Effect.succeed({
          outcome: classifyStatus(response.statusCode, retryAfterOf(response.headers)),
          responseBody
        }))
      },
      (cause: unknown) => {
        clearTimeout(timer)
        resume(Effect.succeed(timedOut ? timeoutReply(attempt) : { outcome: transportOutcome(url, cause), responseBody: null }))
      }
    )
    return Effect.sync(() => {
      clearTimeout(timer)
      controller.abort()
    })
  })

const timeoutReply = (attempt: HttpAttempt): HttpReply => ({
  outcome: new DeliveryTimeout({ timeoutMs: attempt.timeoutMs }),
  responseBody: null
})

/** The client span of an attempt, when deliveries are traced (path and query stay out: they may carry tokens). */
const withClientSpan = (url: URL, send: Effect.Effect<HttpReply>) =>
  Effect.withSpan(
    Effect.tap(send, (reply) =>
      reply.outcome._tag === "Delivered" || reply.outcome._tag === "RetryableStatus" || reply.outcome._tag === "Gone" ||
        reply.outcome._tag === "RejectedStatus"
        ? Effect.annotateCurrentSpan("http.response.status_code", reply.outcome.status)
        : Effect.annotateCurrentSpan("error.type", reply.outcome._tag)),
    "http.client POST",
    {
      kind: "client",
      attributes: {
        "http.request.method": "POST",
        "server.address": url.hostname,
        ...(url.port !== "" ? { "server.port": Number(url.port) } : {}),
        "url.scheme": url.protocol.slice(0, -1),
        "url.full": `${url.protocol}//${url.host}/…`
      }
    }
  )

/** Sends with the guarded agent (sockets resolve through the SSRF guard) or, when private networks are allowed, the open one. */
export const makeSend = (guarded: Agent, open: Agent, options: DeliveryHttpOptions) =>
(attempt: HttpAttempt): Effect.Effect<HttpReply> => {
  const checked = checkUrl(attempt.url, attempt.allowPrivateNetworks)
  if (!(checked instanceof URL)) return Effect.succeed({ outcome: checked, responseBody: null })
  const send = post(attempt.allowPrivateNetworks ? open : guarded, checked, attempt)
  return options.tracing ? withClientSpan(checked, send) : send
}

export interface DeliveryHttpOptions {
  /** Emit an `http.client` span per request (only worth it when traces are exported). */
  readonly tracing: boolean
}

const makeAgent = (lookup: typeof guardedLookup | undefined) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      new Agent({
        // Connect time counts against the attempt's own timeout; this is only a backstop.
        connect: lookup ? { lookup, timeout: 60_000 } : { timeout: 60_000 },
        keepAliveTimeout: 30_000,
        pipelining: 1
      })
    ),
    (agent) => Effect.promise(() => agent.destroy()).pipe(Effect.timeoutOption(1000))
  )

/** The production client: two undici Agents (guarded and open), released with the layer. */
export const layer = (options: DeliveryHttpOptions) =>
  Layer.scoped(
    DeliveryHttp,
    Effect.gen(function*() {
      const guarded = yield* makeAgent(guardedLookup)
      const open = yield* makeAgent(undefined)
      return { send: makeSend(guarded, open, options) }
    })
  )
