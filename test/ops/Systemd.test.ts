import { it } from "@effect/vitest"
import { ConfigProvider, Effect, Option } from "effect"
import { execFileSync, spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import { chmodSync, existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect } from "vitest"
import { defaults, load, providerFrom } from "../../src/config/AppConfig.js"
import { parseEnvFile } from "../../src/config/EnvFile.js"
import { expectOk, fields, repoRoot, TEST_KEY, withDb } from "./support.js"

const unitDir = join(repoRoot, "systemd")
const read = (file: string) => readFileSync(join(unitDir, file), "utf8")

/** `Key=value` lines of a unit (every value of a repeated key, in order). */
const directives = (text: string) => {
  const map = new Map<string, Array<string>>()
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line.trim())
    if (match) map.set(match[1]!, [...(map.get(match[1]!) ?? []), match[2]!])
  }
  return map
}

const systemdAnalyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" })
const haveSystemdAnalyze = systemdAnalyze.status === 0
const systemdVersion = haveSystemdAnalyze ? Number(/systemd (\d+)/.exec(systemdAnalyze.stdout)?.[1] ?? 0) : 0
// In CI (and when asked) a missing systemd-analyze fails the checks instead of skipping them,
// so a CI image without it cannot pass with the units unverified.
const requireSystemd = process.env.CI === "true" || process.env.WEBHOOK_WORKER_REQUIRE_SYSTEMD === "1"

/**
 * A test that needs systemd-analyze (and, with `forVersion`, a systemd of certain versions):
 * skipped where it is missing, unless required, then it fails saying so.
 */
const withSystemd = (name: string, run: () => void, forVersion: (version: number) => boolean = () => true) => {
  if (haveSystemdAnalyze) return it.skipIf(!forVersion(systemdVersion))(name, run)
  if (!requireSystemd) return it.skip(name, run)
  return it(name, () => {
    throw new Error(
      `systemd-analyze is required here (CI=true or WEBHOOK_WORKER_REQUIRE_SYSTEMD=1) but did not run: ${
        systemdAnalyze.error?.message ?? systemdAnalyze.stderr
      }`
    )
  })
}

const scratch = () => mkdtempSync(join(tmpdir(), "ww-systemd-"))

/**
 * Copies the units where systemd-analyze can load them, with the paths that only exist on an
 * installed host pointed at this checkout (the executable it checks must exist), and verifies.
 */
const verify = (edit: (unit: string) => string = (unit) => unit) => {
  const dir = scratch()
  try {
    const service = edit(read("webhook-worker@.service"))
      .replaceAll("/opt/webhook-worker/node_modules/.bin/webhook-worker", join(repoRoot, "bin", "webhook-worker.js"))
      .replace("WorkingDirectory=/opt/webhook-worker", `WorkingDirectory=${repoRoot}`)
    writeFileSync(join(dir, "webhook-worker@.service"), service)
    writeFileSync(join(dir, "webhook-worker.target"), read("webhook-worker.target"))
    const result = spawnSync(
      "systemd-analyze",
      ["verify", join(dir, "webhook-worker@1.service"), join(dir, "webhook-worker@.service"), join(dir, "webhook-worker.target")],
      // The trailing colon keeps the default search path after ours (for network-online.target etc.).
      { encoding: "utf8", env: { ...process.env, SYSTEMD_UNIT_PATH: `${dir}:`, SYSTEMD_LOG_COLOR: "0" } }
    )
    return { code: result.status, output: `${result.stdout}${result.stderr}`.trim() }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

describe("systemd units", () => {
  withSystemd("systemd-analyze verify passes on both units, without a warning", () => {
    const result = verify()
    expect(result.output).toBe("")
    expect(result.code).toBe(0)
    // The check has teeth: a misspelt key is reported.
    const broken = verify((unit) => unit.replace("Restart=on-failure", "Restrat=on-failure"))
    expect(broken.output).toMatch(/Unknown key.*Restrat/)
  })

  withSystemd(
    `the restart back-off drop-in is for systemd >= 254 only (this is ${systemdVersion}; install.sh skips it here)`,
    () => {
      const result = verify((unit) => unit.replace("RestartSec=5", `RestartSec=5\n${read("restart-backoff.conf").split("[Service]")[1]!.trim()}`))
      expect(result.output).toMatch(/Unknown key.*RestartSteps/)
    },
    (version) => version < 254
  )

  withSystemd("the restart back-off drop-in verifies on this systemd", () => {
    const result = verify((unit) => unit.replace("RestartSec=5", `RestartSec=5\n${read("restart-backoff.conf").split("[Service]")[1]!.trim()}`))
    expect(result.output).toBe("")
  }, (version) => version >= 254)

  it("the service is templated, reloadable, stops within its grace period, and is hardened for Node", () => {
    const unit = directives(read("webhook-worker@.service"))
    const one = (key: string) => {
      expect(unit.get(key), key).toHaveLength(1)
      return unit.get(key)![0]!
    }
    expect(one("ExecStart")).toBe(
      "/opt/webhook-worker/node_modules/.bin/webhook-worker run --instance %i --env-file /etc/webhook-worker/webhook-worker.env"
    )
    expect(one("EnvironmentFile")).toBe("/etc/webhook-worker/webhook-worker.env")
    expect(one("User")).toBe("www-data")
    expect(one("Restart")).toBe("on-failure")
    expect(Number(one("RestartSec"))).toBeGreaterThan(0)
    expect(one("RestartPreventExitStatus")).toBe("2")
    expect(one("ExecReload")).toBe("/bin/kill -HUP $MAINPID")
    expect(one("KillSignal")).toBe("SIGTERM")
    expect(one("PartOf")).toBe("webhook-worker.target")
    expect(one("WantedBy")).toBe("webhook-worker.target")
    // Grace period, then up to 10 s to record results, then the pool closes.
    expect(Number(one("TimeoutStopSec"))).toBeGreaterThanOrEqual(defaults.shutdownGracePeriodMs / 1000 + 10)
    expect(one("MemoryMax")).toMatch(/^\d+[KMG]$/)
    for (const [key, value] of Object.entries({
      NoNewPrivileges: "yes",
      ProtectSystem: "strict",
      ProtectHome: "yes",
      PrivateTmp: "yes",
      PrivateDevices: "yes",
      ProtectKernelTunables: "yes",
      ProtectKernelModules: "yes",
      ProtectControlGroups: "yes",
      RestrictNamespaces: "yes",
      RestrictSUIDSGID: "yes",
      LockPersonality: "yes",
      CapabilityBoundingSet: "",
      RestrictAddressFamilies: "AF_INET AF_INET6 AF_UNIX",
      SystemCallErrorNumber: "EPERM"
    })) expect(one(key), key).toBe(value)
    // V8 writes and then executes machine code: this would kill the worker at start.
    expect(unit.has("MemoryDenyWriteExecute")).toBe(false)
    // The service writes nothing; if it ever needs to, ReadWritePaths= must say where.
    expect(unit.has("ReadWritePaths")).toBe(false)
  })

  it("the target wants instances 1 to 3", () => {
    const target = directives(read("webhook-worker.target"))
    expect(target.get("Wants")).toEqual(["webhook-worker@1.service webhook-worker@2.service webhook-worker@3.service"])
    expect(target.get("WantedBy")).toEqual(["multi-user.target"])
  })

  it("webhook-worker.env.example lists every variable of .env.example, with the same defaults", () => {
    const systemdVars = parseEnvFile(read("webhook-worker.env.example"), "systemd/webhook-worker.env.example")
    const rootVars = parseEnvFile(readFileSync(join(repoRoot, ".env.example"), "utf8"), ".env.example")
    if (!(systemdVars instanceof Map) || !(rootVars instanceof Map)) throw new Error("unparseable env example")
    expect([...systemdVars.keys()].sort()).toEqual([...rootVars.keys()].sort())
    // Every variable SPEC.md names is there.
    for (const name of ["DATABASE_URL", "WEBHOOK_SECRET_ENCRYPTION_KEY", "WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS", "LOG_LEVEL", "LOG_FORMAT",
      "WORKER_BATCH_SIZE", "WORKER_POLL_INTERVAL", "MAX_CONCURRENT_DELIVERIES", "DELIVERY_TIMEOUT", "WEBHOOK_MAX_ATTEMPTS",
      "RETRY_BASE_DELAY", "RETRY_BACKOFF_FACTOR", "RETRY_MAX_DELAY", "WORKER_LEASE_SECONDS", "SHUTDOWN_GRACE_PERIOD",
      "METRICS_ENABLED", "METRICS_HOST", "METRICS_PORT", "AUDIT_LOG_ENABLED", "WEBHOOK_ALLOW_PRIVATE_NETWORKS",
      "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"]) expect(systemdVars.has(name), name).toBe(true)
    // Filled in as an operator would, the systemd file means the documented defaults.
    const filled = new Map(systemdVars)
    filled.set("WEBHOOK_SECRET_ENCRYPTION_KEY", TEST_KEY)
    const settings = Effect.runSync(load.pipe(Effect.withConfigProvider(providerFrom({}, filled))))
    const { databaseUrl, encryptionKey, ...rest } = settings
    const { databaseUrl: _d, encryptionKey: _e, ...expected } = defaults
    expect(rest).toEqual(expected)
    expect(Option.isSome(databaseUrl)).toBe(true)
    expect(Option.isSome(encryptionKey)).toBe(true)
    // And so does the root template.
    const rootSettings = Effect.runSync(load.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map([...rootVars].filter(([, v]) => v !== ""))))))
    expect(rootSettings).toEqual(defaults)
  })
})

describe("install.sh and webhook-worker-admin", () => {
  it.live("install.sh lays out /opt, /etc and /usr/local, keeps an existing env file, and points the admin wrapper at them", () =>
    withDb((db) =>
      Effect.gen(function*() {
        const root = scratch()
        yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(root, { recursive: true, force: true })))
        // npm stands in for the registry: it records its arguments and links this checkout.
        const fakeNpm = join(root, "npm")
        writeFileSync(fakeNpm, `#!/bin/sh
echo "$@" > "${root}/npm-args"
while [ $# -gt 0 ]; do case "$1" in --prefix) prefix=$2; shift 2 ;; *) shift ;; esac; done
mkdir -p "$prefix/node_modules/.bin"
ln -sfn "${repoRoot}" "$prefix/node_modules/webhook-worker"
ln -sf ../webhook-worker/bin/webhook-worker.js "$prefix/node_modules/.bin/webhook-worker"
`)
        chmodSync(fakeNpm, 0o755)
        writeFileSync(join(root, "webhook-worker-0.1.0.tgz"), "")
        const paths = {
          PREFIX: join(root, "opt/webhook-worker"),
          CONF_DIR: join(root, "etc/webhook-worker"),
          UNIT_DIR: join(root, "etc/systemd/system"),
          BIN_DIR: join(root, "usr/local/bin"),
          SBIN_DIR: join(root, "usr/local/sbin"),
          NPM: fakeNpm
        }
        const install = () =>
          execFileSync("sh", [join(unitDir, "install.sh"), "./webhook-worker-0.1.0.tgz"], {
            cwd: root,
            encoding: "utf8",
            env: { ...process.env, ...paths }
          })
        expect(install()).toContain("wrote")
        expect(readFileSync(join(root, "npm-args"), "utf8").trim()).toBe(
          `install --prefix ${paths.PREFIX} --omit=dev --no-audit --no-fund ${join(root, "webhook-worker-0.1.0.tgz")}`
        )
        const envFile = join(paths.CONF_DIR, "webhook-worker.env")
        expect(readFileSync(envFile, "utf8")).toBe(read("webhook-worker.env.example"))
        expect(statSync(envFile).mode & 0o777).toBe(0o640)
        expect(statSync(paths.CONF_DIR).mode & 0o777).toBe(0o750)
        expect(readFileSync(join(paths.UNIT_DIR, "webhook-worker@.service"), "utf8")).toBe(read("webhook-worker@.service"))
        expect(existsSync(join(paths.UNIT_DIR, "webhook-worker.target"))).toBe(true)
        expect(readlinkSync(join(paths.BIN_DIR, "webhook-worker"))).toBe(join(paths.PREFIX, "node_modules/.bin/webhook-worker"))
        const admin = join(paths.SBIN_DIR, "webhook-worker-admin")
        expect(statSync(admin).mode & 0o777).toBe(0o755)
        const wrapper = readFileSync(admin, "utf8")
        expect(wrapper).toContain(`CLI=${paths.PREFIX}/node_modules/.bin/webhook-worker\n`)
        expect(wrapper).toContain(`ENV_FILE=${paths.CONF_DIR}/webhook-worker.env\n`)
        expect(wrapper).toContain(`ADMIN_ENV=${paths.CONF_DIR}/admin.env\n`)
        // The env files go to the CLI; the shell never sources them.
        expect(wrapper).not.toMatch(/^\s*(\.|source)\s/m)
        expect(wrapper).toContain(`exec "$CLI" "$@" --env-file "$ENV_FILE" --env-file "$ADMIN_ENV"`)

        // The operator's edits survive a re-run (an upgrade).
        writeFileSync(envFile, `DATABASE_URL=postgresql://nobody:wrong@127.0.0.1:1/none\nWEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\nLOG_LEVEL=WARN\n`)
        expect(install()).toContain("keeping")
        expect(readFileSync(envFile, "utf8")).toContain("LOG_LEVEL=WARN")
        // So do instances added to the target's Wants= (DEPLOYMENT.md "Scaling")…
        const target = join(paths.UNIT_DIR, "webhook-worker.target")
        const scaled = read("webhook-worker.target").replace("webhook-worker@3.service", "webhook-worker@3.service webhook-worker@4.service")
        writeFileSync(target, scaled)
        expect(install()).toContain(`keeping ${target} (edited here`)
        expect(readFileSync(target, "utf8")).toBe(scaled)
        // …while a target as an earlier install left it is brought up to date.
        const earlier = "[Unit]\nDescription=an earlier release's target\n"
        writeFileSync(target, earlier)
        writeFileSync(join(paths.PREFIX, ".installed-target.sha256"), createHash("sha256").update(earlier).digest("hex") + "\n")
        expect(install()).not.toContain(`keeping ${target}`)
        expect(readFileSync(target, "utf8")).toBe(read("webhook-worker.target"))

        // webhook-worker-admin: the service's settings (the key), the owner's DATABASE_URL. Values
        // with `$`, `&`, `;` and backticks, which a shell sourcing the files would expand, cut or
        // run, reach the CLI as written. (The `&` in the owner's URL: a sourcing shell would have
        // backgrounded that assignment, leaving the service's wrong URL in place.)
        const marker = join(root, "executed")
        const hostile = `svc$HOME&x;y\`touch ${marker}\`$(touch ${marker})`
        writeFileSync(envFile, `DATABASE_URL=postgresql://nobody:wrong@127.0.0.1:1/none\nWEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\nOTEL_SERVICE_NAME=${hostile}\n`)
        writeFileSync(join(paths.CONF_DIR, "admin.env"), `DATABASE_URL=${db.url}?application_name=ww_admin$HOME&connect_timeout=10\n`)
        const run = (args: ReadonlyArray<string>) =>
          spawnSync(admin, args, { encoding: "utf8", env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "" } })
        const added = run(["endpoints", "add", "--url", "https://partner.example/hook"])
        expect(added.status, added.stderr).toBe(0)
        expect(fields(added.stdout).secret).toMatch(/^whsec_/)
        const listed = run(["endpoints", "list", "--json"])
        expect(JSON.parse(listed.stdout)).toHaveLength(1)
        expectOk({ code: listed.status, stdout: listed.stdout, stderr: listed.stderr })
        expect(existsSync(marker)).toBe(false)
        // The value itself arrives byte for byte: a bad value is echoed in the one-line error.
        writeFileSync(envFile, `WEBHOOK_SECRET_ENCRYPTION_KEY=${TEST_KEY}\nLOG_LEVEL=${hostile}\n`)
        const echoed = run(["stats"])
        expect(echoed.status).toBe(2)
        expect(echoed.stderr.trim()).toBe(
          `webhook-worker: LOG_LEVEL: expected one of DEBUG, INFO, WARN, ERROR, got "${hostile}"`
        )
        expect(existsSync(marker)).toBe(false)
        // Commands that read no configuration run without the env files.
        const key = run(["keygen"])
        expect(key.status, key.stderr).toBe(0)
        expect(Buffer.from(key.stdout.trim(), "base64")).toHaveLength(32)
      })), 60_000)
})
