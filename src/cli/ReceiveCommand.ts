import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import { createServer, type IncomingMessage, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { generateSecret, verify } from "../signing/Signer.js"
import { CommandFailed } from "./Output.js"

/**
 * `webhook-worker receive`: a local receiver for trying the worker out. It prints each request
 * and whether its Standard Webhooks signature verified, so a first run needs no other tool.
 */

/** Bodies above this are refused (413): it is a tool for looking at webhooks, not a sink. */
const MAX_BODY_BYTES = 1024 * 1024

export interface ReceivedWebhook {
  readonly at: string
  readonly method: string
  readonly path: string
  readonly webhookId: string | null
  readonly eventType: string | null
  /** "verified", or why not. */
  readonly signature: string
  readonly verified: boolean
  readonly status: number
  readonly body: string
}

const header = (request: IncomingMessage, name: string): string | null => {
  const value = request.headers[name]
  return Array.isArray(value) ? value[0] ?? null : value ?? null
}

const eventTypeOf = (body: string): string | null => {
  try {
    const parsed: unknown = JSON.parse(body)
    return typeof parsed === "object" && parsed !== null && "type" in parsed && typeof parsed.type === "string" ? parsed.type : null
  } catch {
    return null
  }
}

export interface ReceiverOptions {
  readonly host: string
  readonly port: number
  readonly secret: string
  /** The answer to a request whose signature verified. */
  readonly status: number
  readonly nowMs: () => number
  readonly onRequest: (received: ReceivedWebhook) => void
}

/**
 * Answers each request: `status` when the signature verifies, 401 when it does not (as a real
 * receiver would, so the worker dead-letters a delivery signed with the wrong secret), 413 for
 * an oversized body.
 */
export const listen = (options: ReceiverOptions) =>
  Effect.acquireRelease(
    Effect.async<Server, CommandFailed>((resume) => {
      const server = createServer((request, response) => {
        const chunks: Array<Buffer> = []
        let size = 0
        request.on("data", (chunk: Buffer) => {
          size += chunk.length
          if (size <= MAX_BODY_BYTES) chunks.push(chunk)
        })
        request.on("end", () => {
          const bytes = Buffer.concat(chunks)
          const body = bytes.toString("utf8")
          const checked = size > MAX_BODY_BYTES
            ? Either.left({ reason: `body over ${MAX_BODY_BYTES} bytes` })
            : verify(options.secret, request.headers, bytes, Math.floor(options.nowMs() / 1000))
          const status = size > MAX_BODY_BYTES ? 413 : Either.isRight(checked) ? options.status : 401
          response.writeHead(status, { "content-type": "text/plain" })
          response.end(Either.isRight(checked) ? "ok\n" : `signature not verified: ${checked.left.reason}\n`)
          options.onRequest({
            at: new Date(options.nowMs()).toISOString(),
            method: request.method ?? "",
            path: request.url ?? "",
            webhookId: header(request, "webhook-id"),
            eventType: eventTypeOf(body),
            signature: Either.isRight(checked) ? "verified" : checked.left.reason,
            verified: Either.isRight(checked),
            status,
            body
          })
        })
      })
      server.once("error", (error: NodeJS.ErrnoException) =>
        resume(Effect.fail(new CommandFailed({
          reason: error.code === "EADDRINUSE"
            ? `--port ${options.port}: ${options.host}:${options.port} is already in use`
            : `cannot listen on ${options.host}:${options.port}: ${error.message}`
        }))))
      server.listen(options.port, options.host, () => resume(Effect.succeed(server)))
    }),
    (server) =>
      Effect.async<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  )

const integerOption = (name: string, min: number, max: number) =>
  Options.text(name).pipe(
    Options.withPseudoName("integer"),
    Options.mapEffect((raw) => {
      const value = Number(raw)
      return raw.trim() !== "" && Number.isInteger(value) && value >= min && value <= max
        ? Effect.succeed(value)
        : Effect.fail(ValidationError.invalidValue(HelpDoc.p(`--${name}: expected an integer from ${min} to ${max}, got "${raw}"`)))
    })
  )

const shortBody = (body: string) => (body.length > 2000 ? `${body.slice(0, 2000)}… (${body.length} characters)` : body)

const describe = (received: ReceivedWebhook) =>
  [
    `${received.at}  ${received.method} ${received.path}  webhook-id=${received.webhookId ?? "-"}  type=${received.eventType ?? "-"}`,
    `  signature ${received.verified ? "verified" : `NOT verified (${received.signature})`}; answered ${received.status}`,
    `  ${shortBody(received.body)}`
  ].join("\n")

export const receiveCommand = Command.make("receive", {
  port: integerOption("port", 0, 65535).pipe(Options.withDescription("Port to listen on (0 picks a free one)"), Options.withDefault(8000)),
  host: Options.text("host").pipe(Options.withDescription("Address to listen on"), Options.withDefault("127.0.0.1")),
  secret: Options.text("secret").pipe(
    Options.withDescription("Signing secret to verify with (whsec_<base64> or any text); one is generated when not given"),
    Options.optional
  ),
  status: integerOption("status", 200, 599).pipe(
    Options.withDescription("HTTP status to answer verified requests with (e.g. 503 to watch retries)"),
    Options.withDefault(200)
  ),
  json: Options.boolean("json").pipe(Options.withDescription("Print one JSON object per line (the first says where it listens)"))
}, (args) =>
  Effect.gen(function*() {
    const secret = Option.getOrElse(args.secret, () => generateSecret())
    const clock = yield* Effect.clock
    const received = yield* Queue.unbounded<ReceivedWebhook>()
    const server = yield* listen({
      host: args.host,
      port: args.port,
      secret,
      status: args.status,
      nowMs: () => clock.unsafeCurrentTimeMillis(),
      onRequest: (request) => received.unsafeOffer(request)
    })
    const port = (server.address() as AddressInfo).port
    const host = args.host.includes(":") ? `[${args.host}]` : args.host
    const url = `http://${host}:${port}/hook`
    if (args.json) {
      yield* Console.log(JSON.stringify({ listening: url, port, secret }))
    } else {
      yield* Console.log([
        `Receiving webhooks on http://${host}:${port}/ (any path; Ctrl-C stops)`,
        `Verifying signatures with ${Option.isSome(args.secret) ? "the given secret" : `the generated secret ${secret}`}`,
        `Try: npx webhook-worker enqueue --url ${url} --secret '${secret}' --event-type test.hello --payload '{"hello":"world"}'`
      ].join("\n"))
    }
    return yield* Effect.forever(
      Queue.take(received).pipe(
        Effect.flatMap((request) => Console.log(args.json ? JSON.stringify(request) : describe(request)))
      )
    )
  }).pipe(Effect.scoped)).pipe(
  Command.withDescription("A local webhook receiver for trying the worker out: prints each request and whether its signature verified")
)
