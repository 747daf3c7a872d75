import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { readEnvFile } from "./EnvFile.js"

export type LogLevelName = "DEBUG" | "INFO" | "WARN" | "ERROR"
export type LogFormat = "json" | "pretty"

/** Every setting of SPEC.md "Configuration", parsed and validated. Durations are in milliseconds. */
export interface AppSettings {
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  readonly encryptionKey: Option.Option<Redacted.Redacted<string>>
  readonly previousEncryptionKeys: ReadonlyArray<Redacted.Redacted<string>>
  readonly logLevel: LogLevelName
  readonly logFormat: LogFormat
  readonly batchSize: number
  readonly pollIntervalMs: number
  readonly maxConcurrentDeliveries: number
  readonly deliveryTimeoutMs: number
  readonly defaultMaxAttempts: number
  readonly retryBaseDelayMs: number
  readonly retryBackoffFactor: number
  readonly retryMaxDelayMs: number
  readonly leaseMs: number
  readonly shutdownGracePeriodMs: number
  readonly metricsEnabled: boolean
  readonly metricsHost: string
  readonly metricsPort: number
  readonly metricsTenantLabels: boolean
  readonly auditLogEnabled: boolean
  readonly allowPrivateNetworks: boolean
  readonly otelEndpoint: Option.Option<string>
  readonly otelServiceName: string
}

/** A configuration value that cannot be used; `variable` names the culprit. Exit status 2. */
export class ConfigInvalid extends Data.TaggedError("ConfigInvalid")<{
  readonly variable: string
  readonly reason: string
}> {
  override get message() {
    return `${this.variable}: ${this.reason}`
  }
}

const secondsToMs = (seconds: number) => Math.round(seconds * 1000)

const invalid = (name: string, reason: string) => ConfigError.InvalidData([name], reason)

/** A variable parsed by `parse`; unset (or empty) gives `fallback`. */
const variable = <A>(
  name: string,
  fallback: A,
  parse: (raw: string) => Either.Either<A, string>,
  description: string
): Config.Config<A> =>
  Config.string(name).pipe(
    Config.option,
    Config.mapOrFail((raw) =>
      Option.match(raw, {
        onNone: () => Either.right(fallback),
        // An empty value (`WORKER_BATCH_SIZE=` in an env file) means unset, whatever the provider.
        onSome: (text) =>
          text.trim() === "" ? Either.right(fallback) : Either.mapLeft(parse(text.trim()), (reason) => invalid(name, reason))
      })
    ),
    Config.withDescription(description)
  )

const number = (name: string, fallback: number, min: number, max: number, options: { integer: boolean; minExclusive?: boolean }, description: string) =>
  variable(name, fallback, (raw) => {
    const value = Number(raw)
    const kind = options.integer ? "an integer" : "a number"
    const low = options.minExclusive ? `greater than ${min}` : `from ${min}`
    const expected = `expected ${kind} ${low} to ${max}, got "${raw}"`
    if (raw === "" || !Number.isFinite(value)) return Either.left(expected)
    if (options.integer && !Number.isInteger(value)) return Either.left(expected)
    if (options.minExclusive ? value <= min : value < min) return Either.left(expected)
    if (value > max) return Either.left(expected)
    return Either.right(value)
  }, description)

const boolean = (name: string, fallback: boolean, description: string) =>
  variable(name, fallback, (raw) => {
    const lower = raw.toLowerCase()
    if (["true", "1", "yes", "on"].includes(lower)) return Either.right(true)
    if (["false", "0", "no", "off"].includes(lower)) return Either.right(false)
    return Either.left(`expected true or false, got "${raw}"`)
  }, description)

const oneOf = <const A extends string>(name: string, fallback: A, choices: ReadonlyArray<A>, normalize: (raw: string) => string, description: string) =>
  variable(name, fallback, (raw) => {
    const value = normalize(raw)
    return (choices as ReadonlyArray<string>).includes(value)
      ? Either.right(value as A)
      : Either.left(`expected one of ${choices.join(", ")}, got "${raw}"`)
  }, description)

/** Decodes an encryption key: standard or URL-safe base64 of exactly 32 bytes. */
export const decodeEncryptionKey = (raw: string): Either.Either<Buffer, string> => {
  const text = raw.trim()
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) {
    return Either.left("expected base64 of 32 random bytes (run `webhook-worker keygen`), got characters outside base64")
  }
  const bytes = Buffer.from(text.replace(/-/g, "+").replace(/_/g, "/"), "base64")
  return bytes.length === 32
    ? Either.right(bytes)
    : Either.left(`expected base64 of 32 random bytes (run \`webhook-worker keygen\`), got ${bytes.length} bytes`)
}

const encryptionKey = (name: string, description: string) =>
  variable(name, Option.none<Redacted.Redacted<string>>(), (raw) =>
    Either.map(decodeEncryptionKey(raw), () => Option.some(Redacted.make(raw))), description)

const previousKeys = variable(
  "WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS",
  [] as ReadonlyArray<Redacted.Redacted<string>>,
  (raw) => {
    const keys = raw.split(",").map((key) => key.trim()).filter((key) => key !== "")
    for (const [index, key] of keys.entries()) {
      const decoded = decodeEncryptionKey(key)
      if (Either.isLeft(decoded)) return Either.left(`key ${index + 1}: ${decoded.left}`)
    }
    return Either.right(keys.map((key) => Redacted.make(key)))
  },
  "comma-separated older keys, accepted for decryption during a rotation"
)

const text = (name: string, fallback: string, description: string) =>
  variable(name, fallback, (raw) => Either.right(raw), description)

const optionalText = (name: string, description: string) =>
  variable(name, Option.none<string>(), (raw) => Either.right(Option.some(raw)), description)

const databaseUrl = variable(
  "DATABASE_URL",
  Option.none<Redacted.Redacted<string>>(),
  (raw) => /^postgres(ql)?:\/\//.test(raw)
    ? Either.right(Option.some(Redacted.make(raw)))
    : Either.left("expected a postgres:// or postgresql:// connection string"),
  "PostgreSQL connection string; unset uses the embedded database"
)

const MAX_SECONDS = 7 * 24 * 3600

/** The whole configuration as an effect `Config`; validation beyond single variables is in `load`. */
export const config = Config.all({
  databaseUrl,
  encryptionKey: encryptionKey("WEBHOOK_SECRET_ENCRYPTION_KEY", "base64 of 32 random bytes (AES-256-GCM)"),
  previousEncryptionKeys: previousKeys,
  logLevel: oneOf("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARN", "ERROR"], (raw) => raw.toUpperCase() === "WARNING" ? "WARN" : raw.toUpperCase(), "DEBUG, INFO, WARN or ERROR"),
  logFormat: oneOf("LOG_FORMAT", "json", ["json", "pretty"], (raw) => raw.toLowerCase(), "json or pretty"),
  batchSize: number("WORKER_BATCH_SIZE", 10, 1, 10_000, { integer: true }, "rows claimed per claim query"),
  pollInterval: number("WORKER_POLL_INTERVAL", 5, 0, 3600, { integer: false, minExclusive: true }, "seconds between polls when no notification arrives"),
  maxConcurrentDeliveries: number("MAX_CONCURRENT_DELIVERIES", 50, 1, 10_000, { integer: true }, "HTTP deliveries in flight per worker process"),
  deliveryTimeout: number("DELIVERY_TIMEOUT", 15, 0, 3600, { integer: false, minExclusive: true }, "seconds for one HTTP attempt"),
  defaultMaxAttempts: number("WEBHOOK_MAX_ATTEMPTS", 5, 1, 1000, { integer: true }, "default max_attempts of a new delivery"),
  retryBaseDelay: number("RETRY_BASE_DELAY", 30, 0, MAX_SECONDS, { integer: false }, "seconds before the first retry"),
  retryBackoffFactor: number("RETRY_BACKOFF_FACTOR", 4, 1, 100, { integer: false }, "growth of each retry delay"),
  retryMaxDelay: number("RETRY_MAX_DELAY", 21600, 0, 30 * 24 * 3600, { integer: false }, "cap in seconds on one retry delay"),
  leaseSeconds: variable("WORKER_LEASE_SECONDS", Option.none<number>(), (raw) => {
    const value = Number(raw)
    return raw !== "" && Number.isFinite(value) && value > 0 && value <= MAX_SECONDS
      ? Either.right(Option.some(value))
      : Either.left(`expected a number of seconds greater than 0, got "${raw}"`)
  }, "seconds a claimed row stays claimed"),
  shutdownGracePeriod: number("SHUTDOWN_GRACE_PERIOD", 30, 0, 3600, { integer: false }, "seconds SIGTERM waits for in-flight deliveries"),
  metricsEnabled: boolean("METRICS_ENABLED", true, "Prometheus endpoint on/off"),
  metricsHost: text("METRICS_HOST", "127.0.0.1", "metrics listen address"),
  metricsPort: number("METRICS_PORT", 9090, 1, 65535, { integer: true }, "metrics port of instance 1"),
  metricsTenantLabels: boolean("METRICS_TENANT_LABELS", true, "user_id/partner_id labels on delivery metrics"),
  auditLogEnabled: boolean("AUDIT_LOG_ENABLED", true, "one webhook_delivery_log row per attempt"),
  allowPrivateNetworks: boolean("WEBHOOK_ALLOW_PRIVATE_NETWORKS", false, "allow loopback/private/link-local destinations"),
  otelEndpoint: optionalText("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/HTTP endpoint; traces are exported when set"),
  otelServiceName: text("OTEL_SERVICE_NAME", "webhook-worker", "service.name of exported traces")
})

/** Turns a ConfigError into one line naming the variable. */
export const describeConfigError = (error: ConfigError.ConfigError): ConfigInvalid => {
  const first = ConfigError.reduceWithContext(error, undefined, {
    andCase: (_, left: ConfigInvalid | undefined, right) => left ?? right,
    orCase: (_, left: ConfigInvalid | undefined, right) => left ?? right,
    invalidDataCase: (_, path, message) => new ConfigInvalid({ variable: path.join("."), reason: message }),
    missingDataCase: (_, path, message) => new ConfigInvalid({ variable: path.join("."), reason: message }),
    sourceUnavailableCase: (_, path, message) => new ConfigInvalid({ variable: path.join("."), reason: message }),
    unsupportedCase: (_, path, message) => new ConfigInvalid({ variable: path.join("."), reason: message })
  })
  return first ?? new ConfigInvalid({ variable: "configuration", reason: String(error) })
}

/** Reads and validates the configuration from the current ConfigProvider. */
export const load: Effect.Effect<AppSettings, ConfigInvalid> = Effect.gen(function*() {
  const raw = yield* config.pipe(Effect.mapError(describeConfigError))
  const deliveryTimeoutMs = secondsToMs(raw.deliveryTimeout)
  const leaseMs = Option.match(raw.leaseSeconds, {
    onNone: () => deliveryTimeoutMs * 4,
    onSome: secondsToMs
  })
  if (leaseMs <= deliveryTimeoutMs) {
    return yield* new ConfigInvalid({
      variable: "WORKER_LEASE_SECONDS",
      reason: `must be longer than DELIVERY_TIMEOUT (${raw.deliveryTimeout}s), got ${leaseMs / 1000}s`
    })
  }
  if (raw.retryMaxDelay < raw.retryBaseDelay) {
    return yield* new ConfigInvalid({
      variable: "RETRY_MAX_DELAY",
      reason: `must be at least RETRY_BASE_DELAY (${raw.retryBaseDelay}s), got ${raw.retryMaxDelay}s`
    })
  }
  return {
    databaseUrl: raw.databaseUrl,
    encryptionKey: raw.encryptionKey,
    previousEncryptionKeys: raw.previousEncryptionKeys,
    logLevel: raw.logLevel,
    logFormat: raw.logFormat,
    batchSize: raw.batchSize,
    pollIntervalMs: secondsToMs(raw.pollInterval),
    maxConcurrentDeliveries: raw.maxConcurrentDeliveries,
    deliveryTimeoutMs,
    defaultMaxAttempts: raw.defaultMaxAttempts,
    retryBaseDelayMs: secondsToMs(raw.retryBaseDelay),
    retryBackoffFactor: raw.retryBackoffFactor,
    retryMaxDelayMs: secondsToMs(raw.retryMaxDelay),
    leaseMs,
    shutdownGracePeriodMs: secondsToMs(raw.shutdownGracePeriod),
    metricsEnabled: raw.metricsEnabled,
    metricsHost: raw.metricsHost,
    metricsPort: raw.metricsPort,
    metricsTenantLabels: raw.metricsTenantLabels,
    auditLogEnabled: raw.auditLogEnabled,
    allowPrivateNetworks: raw.allowPrivateNetworks,
    otelEndpoint: raw.otelEndpoint,
    otelServiceName: raw.otelServiceName
  }
})

/** Defaults of every setting, as SPEC.md gives them. */
export const defaults: AppSettings = Effect.runSync(
  load.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map())))
)

/**
 * The provider the CLI uses: the process environment, overlaid by the env files' variables when
 * files are given (a file wins, so SIGHUP sees edits to a file systemd also loaded at start).
 * Empty values count as unset.
 */
export const providerFrom = (env: NodeJS.ProcessEnv, fileVars: ReadonlyMap<string, string>) => {
  const merged = new Map<string, string>()
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined && value !== "") merged.set(key, value)
  }
  for (const [key, value] of fileVars) {
    if (value === "") merged.delete(key)
    else merged.set(key, value)
  }
  return ConfigProvider.fromMap(merged)
}

/**
 * The variables of the env files, read in order: a later file wins (webhook-worker-admin gives
 * the service's file, then admin.env with the owner's DATABASE_URL). Empty values are kept, so
 * `KEY=` in a later file unsets what an earlier one or the environment set.
 */
export const readEnvFiles = (envFiles: ReadonlyArray<string>) =>
  Effect.reduce(envFiles, new Map<string, string>(), (merged, path) =>
    Effect.map(readEnvFile(path), (vars) => new Map([...merged, ...vars])))

/** Loads settings from the environment and the env files (`--env-file`, in order). */
export const loadFromEnvironment = (envFiles: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env) =>
  Effect.flatMap(readEnvFiles(envFiles), (fileVars) => load.pipe(Effect.withConfigProvider(providerFrom(env, fileVars))))

/** The current settings. Long-running parts read `Settings.current` each time, so SIGHUP can change them. */
export class Settings extends Context.Tag("webhook-worker/Settings")<Settings, {
  readonly get: Effect.Effect<AppSettings>
}>() {
  /** Fixed settings: `defaults` overlaid with `overrides` (for tests and host apps). */
  static readonly layer = (overrides: Partial<AppSettings> = {}) =>
    Layer.succeed(Settings, { get: Effect.succeed({ ...defaults, ...overrides }) })
}

/** The names of settings that only a restart applies. */
export const restartOnlySettings: ReadonlyArray<keyof AppSettings> = [
  "databaseUrl",
  "metricsEnabled",
  "metricsHost",
  "metricsPort",
  "metricsTenantLabels",
  "otelEndpoint",
  "otelServiceName",
  "logFormat"
]

/** Fails with the variable's one-line error when the key is not set. */
export const requireEncryptionKey = (settings: AppSettings) =>
  Option.match(settings.encryptionKey, {
    onNone: () =>
      Effect.fail(
        new ConfigInvalid({
          variable: "WEBHOOK_SECRET_ENCRYPTION_KEY",
          reason: "is required to read or write webhook secrets (generate one with `webhook-worker keygen`)"
        })
      ),
    onSome: (key) => Effect.succeed(key)
  })
