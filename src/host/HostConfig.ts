import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { type AppSettings, ConfigInvalid, load, requireEncryptionKey } from "../config/AppConfig.js"

/**
 * Worker settings as a host app passes them in code. Each one is the SPEC.md variable named in
 * its comment; durations take Effect's `DurationInput` ("30 seconds", a `Duration`, or a number
 * of milliseconds).
 */
export interface WorkerSettings {
  /** WEBHOOK_SECRET_ENCRYPTION_KEY: base64 of 32 random bytes. */
  readonly encryptionKey?: string | Redacted.Redacted<string> | undefined
  /** WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS: older keys, accepted for decryption during a rotation. */
  readonly previousEncryptionKeys?: ReadonlyArray<string | Redacted.Redacted<string>> | undefined
  /** WORKER_BATCH_SIZE */
  readonly batchSize?: number | undefined
  /** WORKER_POLL_INTERVAL */
  readonly pollInterval?: Duration.DurationInput | undefined
  /** MAX_CONCURRENT_DELIVERIES */
  readonly maxConcurrentDeliveries?: number | undefined
  /** DELIVERY_TIMEOUT */
  readonly deliveryTimeout?: Duration.DurationInput | undefined
  /** WEBHOOK_MAX_ATTEMPTS: the default `maxAttempts` of a new delivery. */
  readonly defaultMaxAttempts?: number | undefined
  /** RETRY_BASE_DELAY */
  readonly retryBaseDelay?: Duration.DurationInput | undefined
  /** RETRY_BACKOFF_FACTOR */
  readonly retryBackoffFactor?: number | undefined
  /** RETRY_MAX_DELAY */
  readonly retryMaxDelay?: Duration.DurationInput | undefined
  /** WORKER_LEASE_SECONDS */
  readonly lease?: Duration.DurationInput | undefined
  /** SHUTDOWN_GRACE_PERIOD: how long closing the scope waits for in-flight deliveries. */
  readonly shutdownGracePeriod?: Duration.DurationInput | undefined
  /** AUDIT_LOG_ENABLED */
  readonly auditLog?: boolean | undefined
  /** WEBHOOK_ALLOW_PRIVATE_NETWORKS */
  readonly allowPrivateNetworks?: boolean | undefined
}

/** Where the settings come from. */
export interface SettingsSource {
  /**
   * Read the variables from this provider. Without it (and without `settings`), the current
   * ConfigProvider is read: the process environment unless the host runtime set another.
   */
  readonly config?: ConfigProvider.ConfigProvider | undefined
  /**
   * Settings in code. Alone they are overlaid on the defaults and nothing else is read; with
   * `config` they are overlaid on what that provider gives.
   */
  readonly settings?: WorkerSettings | undefined
}

const VARIABLES: { readonly [K in keyof WorkerSettings]-?: string } = {
  encryptionKey: "WEBHOOK_SECRET_ENCRYPTION_KEY",
  previousEncryptionKeys: "WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS",
  batchSize: "WORKER_BATCH_SIZE",
  pollInterval: "WORKER_POLL_INTERVAL",
  maxConcurrentDeliveries: "MAX_CONCURRENT_DELIVERIES",
  deliveryTimeout: "DELIVERY_TIMEOUT",
  defaultMaxAttempts: "WEBHOOK_MAX_ATTEMPTS",
  retryBaseDelay: "RETRY_BASE_DELAY",
  retryBackoffFactor: "RETRY_BACKOFF_FACTOR",
  retryMaxDelay: "RETRY_MAX_DELAY",
  lease: "WORKER_LEASE_SECONDS",
  shutdownGracePeriod: "SHUTDOWN_GRACE_PERIOD",
  auditLog: "AUDIT_LOG_ENABLED",
  allowPrivateNetworks: "WEBHOOK_ALLOW_PRIVATE_NETWORKS"
}

const OPTION_OF = new Map(Object.entries(VARIABLES).map(([option, variable]) => [variable, option]))

/**
 * Variables that configure the standalone process only: the host brings its own database,
 * logger, metrics endpoint and tracer. They are not read in a host, so a host's own LOG_LEVEL
 * (say `trace`) or DATABASE_URL cannot fail the worker's configuration.
 */
const PROCESS_ONLY = new Set([
  "DATABASE_URL",
  "LOG_LEVEL",
  "LOG_FORMAT",
  "METRICS_ENABLED",
  "METRICS_HOST",
  "METRICS_PORT",
  "METRICS_TENANT_LABELS",
  "OTEL_EXPORTER_OTLP_ENDPOINT",
  "OTEL_SERVICE_NAME"
])

const secret = (value: string | Redacted.Redacted<string>) => (Redacted.isRedacted(value) ? Redacted.value(value) : value)

const seconds = (option: keyof WorkerSettings, input: Duration.DurationInput): string | ConfigInvalid => {
  const duration = Duration.decodeUnknown(input)
  if (Option.isNone(duration) || !Duration.isFinite(duration.value)) {
    return new ConfigInvalid({ variable: option, reason: "must be a finite duration, e.g. \"30 seconds\"" })
  }
  return String(Duration.toMillis(duration.value) / 1000)
}

/** The settings as the variables `load` reads (so both sources share one validation). */
const toVariables = (settings: WorkerSettings): Map<string, string> | ConfigInvalid => {
  const vars = new Map<string, string>()
  for (const option of Object.keys(VARIABLES) as Array<keyof WorkerSettings>) {
    const value = settings[option]
    if (value === undefined) continue
    let text: string | ConfigInvalid
    switch (option) {
      case "encryptionKey":
        text = secret(value as string | Redacted.Redacted<string>)
        break
      case "previousEncryptionKeys":
        text = (value as ReadonlyArray<string | Redacted.Redacted<string>>).map(secret).join(",")
        break
      case "pollInterval":
      case "deliveryTimeout":
      case "retryBaseDelay":
      case "retryMaxDelay":
      case "lease":
      case "shutdownGracePeriod":
        text = seconds(option, value as Duration.DurationInput)
        break
      default:
        text = String(value)
    }
    if (text instanceof ConfigInvalid) return text
    vars.set(VARIABLES[option], text)
  }
  return vars
}

/** Hides the standalone-only variables of a provider. */
const forHost = (provider: ConfigProvider.ConfigProvider) =>
  ConfigProvider.mapInputPath(provider, (name) => (PROCESS_ONLY.has(name) ? `webhook-worker:ignored:${name}` : name))

/**
 * The worker's settings for a host: validated exactly as the CLI validates its environment.
 * An error names the option when it came from `settings`, the variable otherwise.
 */
export const resolve = (source: SettingsSource = {}): Effect.Effect<AppSettings, ConfigInvalid> =>
  Effect.gen(function*() {
    const fromCode = source.settings === undefined ? undefined : toVariables(source.settings)
    if (fromCode instanceof ConfigInvalid) return yield* fromCode
    const base = source.config ?? (fromCode === undefined ? yield* Effect.configProviderWith(Effect.succeed) : undefined)
    const code = fromCode === undefined ? undefined : ConfigProvider.fromMap(fromCode)
    const provider = code !== undefined && base !== undefined
      ? ConfigProvider.orElse(code, () => base)
      : code ?? base ?? ConfigProvider.fromMap(new Map())
    // Settings from code alone name options throughout, cross-checks too (a retryBaseDelay above
    // the default retryMaxDelay fails on the latter, which the host never set).
    return yield* load.pipe(
      Effect.withConfigProvider(forHost(provider)),
      Effect.mapError((error) => (fromCodeOnly(source) || fromCode?.has(error.variable) === true ? inCodeTerms(error) : error))
    )
  })

/** Every setting comes from `settings` (or its default): errors then name options, not variables. */
const fromCodeOnly = (source: SettingsSource) => source.settings !== undefined && source.config === undefined

const VARIABLE_NAMES = new RegExp(`\\b(${[...OPTION_OF.keys()].join("|")})\\b`, "g")

/** The error with the options' names for the variables', in its reason as well. */
const inCodeTerms = (error: ConfigInvalid) =>
  new ConfigInvalid({
    variable: OPTION_OF.get(error.variable) ?? error.variable,
    reason: error.reason.replace(VARIABLE_NAMES, (name) => OPTION_OF.get(name) ?? name)
  })

/** Fails without an encryption key, naming the option when the settings came from code only. */
export const requireKey = (
  settings: AppSettings,
  source: SettingsSource = {}
): Effect.Effect<Redacted.Redacted<string>, ConfigInvalid> =>
  Effect.suspend((): Effect.Effect<Redacted.Redacted<string>, ConfigInvalid> => requireEncryptionKey(settings)).pipe(
    Effect.mapError((error) => (fromCodeOnly(source) ? inCodeTerms(error) : error))
  )
