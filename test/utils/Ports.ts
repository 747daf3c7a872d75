import { Effect } from "effect"
import { createServer } from "node:net"

/** A free loopback port (bound, then released). */
export const freePort = Effect.promise(() =>
  new Promise<number>((resolve) => {
    const probe = createServer()
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number }
      probe.close(() => resolve(port))
    })
  })
)
