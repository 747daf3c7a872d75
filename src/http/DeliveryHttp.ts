import { HttpClient, HttpClientRequest, type HttpClientError } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Chunk, Context, Duration, Effect, Layer, Option, Stream } from "effect"
import { Agent } from "undici"
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

const transportOutcome = (url: URL, error: HttpClientError.HttpClientError): AttemptOutcome => {
  const { blocked, code, message } = errorCode(error.cause)
  if (blocked !== undefined) {
    return new DestinationBlocked({ hostname: blocked.hostname, address: blocked.address, range: blocked.reason })
  }
  if (DNS_CODES.has(code)) return new DnsFailed({ hostname: url.hostname, code })
  return new ConnectionFailed({ code, detail: message })
}

const readCapped = (stream: Stream.Stream<Uint8Array, unknown>) =>
  stream.pipe(
    Stream.runFoldWhile(
      { size: 0, chunks: Chunk.empty<Uint8Array>() },
      (acc) => acc.size < RESPONSE_BODY_LIMIT,
      (acc, chunk) => ({ size: acc.size + chunk.length, chunks: Chunk.append(acc.chunks, chunk) })
    ),
    Effect.map(({ chunks }) =>
      Buffer.concat(Chunk.toReadonlyArray(chunks)).subarray(0, RESPONSE_BODY_LIMIT).toString("utf8")
    ),
    // The status decided the outcome already; a body cut short is no reason to fail the attempt.
    Effect.orElseSucceed(() => "")
  )

/**
 * Sends with `guarded` (sockets resolve through the SSRF guard) or, when private networks are
 * allowed, `open`. The whole attempt, connect to last byte, is under `timeoutMs`.
 */
export const makeSend = (guarded: HttpClient.HttpClient, open: HttpClient.HttpClient) =>
(attempt: HttpAttempt): Effect.Effect<HttpReply> => {
  const checked = checkUrl(attempt.url, attempt.allowPrivateNetworks)
  if (!(checked instanceof URL)) return Effect.succeed({ outcome: checked, responseBody: null })
  const url = checked
  let request = HttpClientRequest.post(url).pipe(
    HttpClientRequest.setHeaders(attempt.headers),
    HttpClientRequest.bodyText(attempt.body, "application/json")
  )
  if (url.username !== "" || url.password !== "") {
    request = HttpClientRequest.basicAuth(request, decodeURIComponent(url.username), decodeURIComponent(url.password))
  }
  const client = attempt.allowPrivateNetworks ? open : guarded
  return client.execute(request).pipe(
    Effect.flatMap((response) =>
      Effect.map(readCapped(response.stream), (body): HttpReply => ({
        outcome: classifyStatus(response.status, () => parseRetryAfter(response.headers["retry-after"], Date.now())),
        responseBody: body
      }))
    ),
    Effect.scoped,
    Effect.catchAll((error) => Effect.succeed<HttpReply>({ outcome: transportOutcome(url, error), responseBody: null })),
    Effect.timeoutTo({
      duration: Duration.millis(attempt.timeoutMs),
      onSuccess: (reply) => reply,
      onTimeout: (): HttpReply => ({ outcome: new DeliveryTimeout({ timeoutMs: attempt.timeoutMs }), responseBody: null })
    })
  )
}

export interface DeliveryHttpOptions {
  /** Emit an `http.client` span per request (only worth it when traces are exported). */
  readonly tracing: boolean
}

const agentClient = (options: DeliveryHttpOptions, lookup: typeof guardedLookup | undefined) =>
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
  ).pipe(
    Effect.map((agent) => {
      const base = NodeHttpClient.makeUndici(agent).pipe(HttpClient.withTracerPropagation(false))
      return options.tracing ? base : base.pipe(HttpClient.withTracerDisabledWhen(() => true))
    })
  )

/**
 * The production client: undici Agents with keep-alive pools per origin. Redirects are not
 * followed (undici's default). The platform client adds no timeout of its own.
 */
export const layer = (options: DeliveryHttpOptions) =>
  Layer.scoped(
    DeliveryHttp,
    Effect.gen(function*() {
      const guarded = yield* agentClient(options, guardedLookup)
      const open = yield* agentClient(options, undefined)
      return { send: makeSend(guarded, open) }
    })
  )
