import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

/** The package root: the same relative place from `src/` (tsx, tests) and from `dist/` (built). */
export const packageRoot = fileURLToPath(new URL("..", import.meta.url))

const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }

export const version: string = manifest.version

export const userAgent = `webhook-worker/${version}`
