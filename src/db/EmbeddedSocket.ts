import type { PGlite } from "@electric-sql/pglite"
import { PGLiteSocketHandler } from "@electric-sql/pglite-socket"
import { createServer, type Socket } from "node:net"

/**
 * Serves one PGlite instance to PostgreSQL clients on a loopback port: pglite-socket's
 * connection handler does the wire framing (startup, SSL and cancel requests), and the
 * `SessionScheduler` below decides whose messages PGlite runs.
 *
 * Why not pglite-socket's own server (0.2.17): its queue hands PGlite to connections message
 * by message. PGlite is ONE PostgreSQL session, so when a client's Parse/Bind/Execute/Sync
 * arrive in more than one TCP read, another connection's Parse runs in between and replaces the
 * unnamed statement: the first client then binds or executes the other's statement ("bind
 * message supplies 2 parameters, but prepared statement "" requires 1", or worse, silently the
 * wrong one). The worker and a CLI command talk to the same database at once, so this matters.
 */

/** The queue type the handler expects; pglite-socket does not export it. */
type HandlerQueue = ConstructorParameters<typeof PGLiteSocketHandler>[0]["queryQueue"]

interface Turn {
  readonly handlerId: number
  readonly run: () => Promise<number>
  readonly resolve: (bytes: number) => void
  readonly reject: (error: Error) => void
}

const SYNC = Uint8Array.of(0x53, 0, 0, 0, 4)
/** Describe of a portal that does not exist: an error, which aborts the implicit transaction. */
const ABORT_CYCLE = (() => {
  // (Not the unnamed portal "": that one may well exist.)
  const name = Buffer.from("Pwebhook_worker_no_such_portal\0", "utf8")
  const message = Buffer.alloc(5 + name.length)
  message[0] = 0x44 // 'D'
  message.writeInt32BE(4 + name.length, 1)
  name.copy(message, 5)
  return message
})()
const TYPE_QUERY = 0x51 // 'Q'
const TYPE_SYNC = 0x53 // 'S'
const TYPE_TERMINATE = 0x58 // 'X'
const TYPE_BACKEND_KEY = 0x4b // 'K'
const PROTOCOL_3 = 196608

const isStartup = (message: Uint8Array) =>
  message.length >= 8 && Buffer.from(message.buffer, message.byteOffset, message.byteLength).readInt32BE(4) === PROTOCOL_3

/** A simple-protocol Query message. */
const simpleQuery = (text: string): Uint8Array => {
  const body = Buffer.from(text + "\0", "utf8")
  const message = Buffer.alloc(5 + body.length)
  message[0] = TYPE_QUERY
  message.writeInt32BE(4 + body.length, 1)
  body.copy(message, 5)
  return message
}

/** The backend messages in `data` except those of type `type`. */
const withoutMessages = (data: Buffer, type: number): Buffer => {
  const kept: Array<Buffer> = []
  let offset = 0
  while (offset + 5 <= data.length) {
    const end = offset + 1 + data.readInt32BE(offset + 1)
    if (data[offset] !== type) kept.push(data.subarray(offset, end))
    offset = end
  }
  if (offset < data.length) kept.push(data.subarray(offset))
  return Buffer.concat(kept)
}

/** A FATAL ErrorResponse, which a client reports as the reason its connection failed. */
export const fatalError = (code: string, message: string): Buffer => {
  const fields = Buffer.from(`SFATAL\0VFATAL\0C${code}\0M${message}\0\0`, "utf8")
  const packet = Buffer.alloc(5 + fields.length)
  packet[0] = 0x45 // 'E'
  packet.writeInt32BE(4 + fields.length, 1)
  fields.copy(packet, 5)
  return packet
}

/**
 * Gives the session to one connection for a whole protocol cycle: from its first message up to
 * a Sync or simple Query that leaves no transaction open. Other connections' messages wait, so
 * statements never interleave, and an open transaction has the session to itself (the other
 * connections wait for its COMMIT, as PGlite has no second session to give them).
 */
export class SessionScheduler {
  private owner: number | null = null
  /** The owner has sent part of an extended-protocol cycle (no Sync yet). */
  private midCycle = false
  private waiting: Array<Turn> = []
  private running = false

  constructor(private readonly db: PGlite) {}

  enqueue(handlerId: number, message: Uint8Array, onData: (data: Uint8Array) => void): Promise<number> {
    return this.schedule(handlerId, () => this.execute(handlerId, message, onData))
  }

  /** The connection is gone: drop what it still had queued. */
  clearQueueForHandler(handlerId: number): void {
    const dropped = this.waiting.filter((turn) => turn.handlerId === handlerId)
    this.waiting = this.waiting.filter((turn) => turn.handlerId !== handlerId)
    for (const turn of dropped) turn.reject(new Error("connection closed"))
  }

  /** The connection is gone: if it held the session, end what it left open and pass the session on. */
  clearTransactionIfNeeded(handlerId: number): Promise<void> {
    if (this.owner !== handlerId) return Promise.resolve()
    return this.schedule(handlerId, () => this.reset()).then(() => undefined)
  }

  private schedule(handlerId: number, run: () => Promise<number>): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.waiting.push({ handlerId, run, resolve, reject })
      void this.pump()
    })
  }

  private async pump(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      while (this.waiting.length > 0) {
        const index = this.owner === null ? 0 : this.waiting.findIndex((turn) => turn.handlerId === this.owner)
        // The owner is mid-cycle and has not sent its next message yet: everyone else waits.
        if (index === -1) break
        const [turn] = this.waiting.splice(index, 1)
        if (turn === undefined) break
        this.owner = turn.handlerId
        try {
          turn.resolve(await turn.run())
        } catch (error) {
          turn.reject(error instanceof Error ? error : new Error(String(error)))
        }
      }
    } finally {
      this.running = false
    }
  }

  private async execute(handlerId: number, message: Uint8Array, onData: (data: Uint8Array) => void): Promise<number> {
    // Terminate: the client is leaving; undo what it left open, as for a dropped connection.
    // (PGlite is not sent the message: its one session must outlive every client.)
    if (message[0] === TYPE_TERMINATE) return this.reset()
    const startup = isStartup(message)
    const startupReply: Array<Buffer> = []
    let bytes = 0
    await this.db.runExclusive(() =>
      this.db.execProtocolRawStream(message, {
        onRawData: (data) => {
          bytes += data.length
          if (startup) startupReply.push(Buffer.from(data))
          else onData(data)
        }
      })
    )
    // Without BackendKeyData a client knows it cannot cancel. @effect/sql-pg otherwise sends
    // `pg_cancel_backend` through a second pooled connection when a query is interrupted; with
    // the pool of one that embedded mode needs, that waits 5 s for a connection that never frees.
    if (startup) onData(withoutMessages(Buffer.concat(startupReply), TYPE_BACKEND_KEY))
    const endsCycle = startup || message[0] === TYPE_SYNC || message[0] === TYPE_QUERY
    this.midCycle = !endsCycle
    if (endsCycle && !this.db.isInTransaction() && this.owner === handlerId) this.owner = null
    return bytes
  }

  /**
   * The owner left: undo what it left open, as PostgreSQL does when a connection drops. A cycle
   * without its Sync is made to fail first (a Sync alone would COMMIT its implicit transaction),
   * then an open transaction block is rolled back, and the session is free.
   */
  private async reset(): Promise<number> {
    if (this.midCycle) {
      await this.db.runExclusive(() => this.db.execProtocolRaw(ABORT_CYCLE))
      await this.db.runExclusive(() => this.db.execProtocolRaw(SYNC))
    }
    if (this.db.isInTransaction()) await this.db.runExclusive(() => this.db.execProtocolRaw(simpleQuery("ROLLBACK")))
    this.midCycle = false
    this.owner = null
    return 0
  }
}

export interface ServeOptions {
  readonly host: string
  /** 0 picks a free port. */
  readonly port: number
  /** Connections served at once; one more is refused with PostgreSQL's "too many clients" error. */
  readonly maxConnections: number
}

export interface Served {
  readonly port: number
  /** Stops listening, closes every connection (rolling back what they left open). */
  readonly close: () => Promise<void>
}

/** Serves `db` on a loopback port. */
export const serve = (db: PGlite, options: ServeOptions): Promise<Served> =>
  new Promise((resolve, reject) => {
    const scheduler = new SessionScheduler(db)
    // The handler only calls enqueue, clearQueueForHandler and clearTransactionIfNeeded; the
    // declared type also lists the stock queue's private fields, hence the cast.
    const queue = scheduler as unknown as HandlerQueue
    const handlers = new Set<PGLiteSocketHandler>()
    const sockets = new Set<Socket>()
    const server = createServer((socket: Socket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
      if (handlers.size >= options.maxConnections) {
        const refusal = fatalError("53300", `sorry, too many clients already (the embedded database serves ${options.maxConnections} connections)`)
        socket.write(refusal, () => socket.destroy())
        return
      }
      const handler = new PGLiteSocketHandler({ queryQueue: queue, closeOnDetach: true })
      handlers.add(handler)
      const forget = () => handlers.delete(handler)
      handler.addEventListener("close", forget)
      handler.addEventListener("error", forget)
      handler.attach(socket).catch(() => {
        forget()
        socket.destroy()
      })
    })
    server.once("error", reject)
    server.listen(options.port, options.host, () => {
      server.off("error", reject)
      const address = server.address()
      if (address === null || typeof address === "string") return reject(new Error("no TCP address"))
      resolve({
        port: address.port,
        close: async () => {
          const closed = new Promise<void>((done) => server.close(() => done()))
          await Promise.all([...handlers].map((handler) => handler.detach(true)))
          handlers.clear()
          // The server closes once its last connection has: do not wait for clients to hang up.
          for (const socket of sockets) socket.destroy()
          await closed
        }
      })
    })
  })
