import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"

/**
 * Records every module a child Node process loads through the ESM loader (its URL, one a line),
 * via a module customization hook registered with `--import` in NODE_OPTIONS. Pass `env` to the
 * child; `loaded()` reads what it loaded so far. A CommonJS module required by another CommonJS
 * module is not seen (Node 20's hooks only see the ESM side), so check the package entry points.
 */
export const makeModuleProbe = () => {
  const dir = mkdtempSync(join(tmpdir(), "ww-probe-"))
  const log = join(dir, "loaded.txt")
  writeFileSync(
    join(dir, "hooks.mjs"),
    `import { appendFileSync } from "node:fs"
export async function load(url, context, next) {
  appendFileSync(${JSON.stringify(log)}, url + "\\n")
  return next(url, context)
}
`
  )
  writeFileSync(
    join(dir, "register.mjs"),
    `import { register } from "node:module"
register(${JSON.stringify(pathToFileURL(join(dir, "hooks.mjs")).href)})
`
  )
  return {
    env: { NODE_OPTIONS: `--import=${pathToFileURL(join(dir, "register.mjs")).href}` },
    loaded: (): ReadonlyArray<string> => (existsSync(log) ? readFileSync(log, "utf8").split("\n").filter((line) => line !== "") : [])
  }
}
