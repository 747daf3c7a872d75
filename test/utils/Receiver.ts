import { Effect } from "effect"
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"

export interface ReceivedRequest {
  readonly method: string
  readonly path: string
  readonly headers: IncomingHttpHeaders
  readonly body: string
  readonly at: number
}

export type Reply =
  | { readonly status: number; readonly headers?: Record<string, string>; readonly body?: string; readonly delayMs?: number }
  | { readonly destroy: true }

/** A real HTTP server on 127.0.0.1 that records every request and answers as told. */
export interface Receiver {
  readonly url: (path?: string) => string
  readonly port: number
  readonly requests: Array<ReceivedRequest>
  /** How to answer; by default 200 "ok". */
  respond: (request: ReceivedRequest) => Reply
  /** Requests received and not answered yet. */
  readonly active: number
  /** The most requests held open at once since the start (or since the test last set it). */
  maxActive: number
  readonly waitForRequests: (count: number, timeoutMs?: number) => Effect.Effect<ReadonlyArray<ReceivedRequest>>
}

export const makeReceiver = Effect.acquireRelease(
  Effect.async<Receiver & { readonly close: () => Promise<void> }>((resume) => {
    let active = 0
    const receiver: Receiver & { close: () => Promise<void> } = {
      close: () =>
        new Promise<void>((done) => {
          server.closeAllConnections()
          server.close(() => done())
        }),
      url: (path = "/hook") => `http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`,
      get port() {
        return (server.address() as AddressInfo).port
      },
      requests: [],
      respond: () => ({ status: 200, body: "ok" }),
      get active() {
        return active
      },
      maxActive: 0,
      waitForRequests: (count, timeoutMs = 10_000) =>
        Effect.gen(function*() {
          const deadline = Date.now() + timeoutMs
          while (receiver.requests.length < count) {
            if (Date.now() > deadline) {
              return yield* Effect.die(new Error(`expected ${count} requests, got ${receiver.requests.length}`))
            }
            yield* Effect.sleep("10 millis")
          }
          return receiver.requests
        })
    }
    const server = createServer((req, res) => {
      const chunks: Array<Buffer> = []
      req.on("data", (chunk: Buffer) => chunks.push(chunk))
      req.on("end", () => {
        const request: ReceivedRequest = {
          method: req.method ?? "",
          path: req.url ?? "",
          headers: req.headers,
          body: Buffer.concat(chunks).toString("utf8"),
          at: Date.now()
        }
        receiver.requests.push(request)
        active++
        receiver.maxActive = Math.max(receiver.maxActive, active)
        res.on("close", () => active--)
        const reply = receiver.respond(request)
        if ("destroy" in reply) {
          req.socket.destroy()
          return
        }
        const send = () => {
          res.writeHead(reply.status, reply.headers ?? {})
          res.end(reply.body ?? "")
        }
        if (reply.delayMs) setTimeout(send, reply.delayMs)
        else send()
      })
    })
    server.keepAliveTimeout = 5000
    server.listen(0, "127.0.0.1", () => resume(Effect.succeed(receiver)))
  }),
  (receiver) => Effect.promise(() => receiver.close())
)
