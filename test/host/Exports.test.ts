import { execFile } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

/**
 * The package as an app sees it: imported by its own name from the repository root (Node's
 * self-reference), so `exports` in package.json decides what resolves, to the built dist/
 * (`npm test` builds it first).
 */
const root = fileURLToPath(new URL("../..", import.meta.url))

const SCRIPT = `
const keys = (m) => Object.keys(m).sort()
const refused = async (specifier) => {
  try {
    await import(specifier)
    return "imported"
  } catch (error) {
    return error.code
  }
}
const main = await import("webhook-worker")
const receiver = await import("webhook-worker/receiver")
const pkg = await import("webhook-worker/package.json", { with: { type: "json" } })
console.log(JSON.stringify({
  main: keys(main),
  queue: keys(main.WebhookQueue),
  worker: keys(main.WebhookWorker),
  receiver: keys(receiver),
  sameVerifier: receiver.verifyWebhook === main.verifyWebhook,
  kinds: Object.fromEntries(keys(main).map((k) => [k, typeof main[k]])),
  name: pkg.default.name,
  internals: {
    worker: await refused("webhook-worker/dist/worker/Worker.js"),
    distIndex: await refused("webhook-worker/dist/index.js"),
    cli: await refused("webhook-worker/dist/cli/Program.js"),
    host: await refused("webhook-worker/host/Client"),
    src: await refused("webhook-worker/src/index.ts")
  }
}))
`

interface Surface {
  readonly main: ReadonlyArray<string>
  readonly queue: ReadonlyArray<string>
  readonly worker: ReadonlyArray<string>
  readonly receiver: ReadonlyArray<string>
  readonly sameVerifier: boolean
  readonly kinds: Record<string, string>
  readonly name: string
  readonly internals: Record<string, string>
}

const importByName = () =>
  new Promise<Surface>((resolve, reject) =>
    execFile(process.execPath, ["--input-type=module", "-e", SCRIPT], { cwd: root, timeout: 30_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${error.message}\n${stderr}`))
      else resolve(JSON.parse(stdout) as Surface)
    })
  )

describe("the package's exports map", () => {
  it("`webhook-worker` and `webhook-worker/receiver` resolve to dist/ with exactly the documented names; internals are refused", async () => {
    const surface = await importByName()
    expect(surface.name).toBe("webhook-worker")
    expect(surface.main).toEqual([
      "ConfigInvalid",
      "EndpointIsDisabled",
      "EndpointNotFound",
      "EventTypeNotSubscribed",
      "InvalidEnqueueRequest",
      "SignatureInvalid",
      "WebhookQueue",
      "WebhookWorker",
      "createWebhookClient",
      "isEnqueueError",
      "startWebhookWorker",
      "verifyWebhook"
    ])
    expect(surface.kinds).toMatchObject({
      WebhookQueue: "object",
      WebhookWorker: "object",
      createWebhookClient: "function",
      startWebhookWorker: "function",
      verifyWebhook: "function",
      isEnqueueError: "function",
      ConfigInvalid: "function"
    })
    expect(surface.queue).toEqual(expect.arrayContaining(["WebhookQueue", "layer", "enqueue", "enqueueMany"]))
    expect(surface.worker).toEqual(["layer"])
    expect(surface.receiver).toEqual(["SignatureInvalid", "verifyWebhook"])
    expect(surface.sameVerifier).toBe(true)
    for (const [what, code] of Object.entries(surface.internals)) expect(code, what).toBe("ERR_PACKAGE_PATH_NOT_EXPORTED")
  }, 30_000)

  it("every entry has its type declarations in dist/", () => {
    const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
      exports: Record<string, string | { types: string; default: string }>
    }
    const entries = Object.entries(pkg.exports).filter((entry): entry is [string, { types: string; default: string }] => typeof entry[1] !== "string")
    expect(entries.map(([subpath]) => subpath)).toEqual([".", "./receiver"])
    for (const [subpath, { types, default: code }] of entries) {
      expect(existsSync(join(root, code)), `${subpath} → ${code}`).toBe(true)
      expect(existsSync(join(root, types)), `${subpath} → ${types}`).toBe(true)
    }
    const declarations = readFileSync(join(root, "dist/index.d.ts"), "utf8")
    for (const name of ["WebhookQueue", "WebhookWorker", "createWebhookClient", "startWebhookWorker", "verifyWebhook", "EnqueueRequest", "WebhookClientOptions"]) {
      expect(declarations, name).toContain(name)
    }
  })
})
