import { it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option, Redacted } from "effect"
import { describe, expect } from "vitest"
import { defaults, load, providerFrom } from "../../src/config/AppConfig.js"
import { parseEnvFile } from "../../src/config/EnvFile.js"
import { changedSettings } from "../../src/config/LiveSettings.js"

const loadFrom = (vars: Record<string, string>) =>
  Effect.runSync(Effect.either(load.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(vars)))))))

describe("configuration", () => {
  it("has SPEC.md's defaults", () => {
    expect(defaults).toMatchObject({
      logLevel: "INFO",
      logFormat: "json",
      batchSize: 10,
      pollIntervalMs: 5000,
      maxConcurrentDeliveries: 50,
      deliveryTimeoutMs: 15000,
      defaultMaxAttempts: 5,
      retryBaseDelayMs: 30000,
      retryBackoffFactor: 4,
      retryMaxDelayMs: 21_600_000,
      leaseMs: 60000,
      shutdownGracePeriodMs: 30000,
      metricsEnabled: true,
      metricsHost: "127.0.0.1",
      metricsPort: 9090,
      auditLogEnabled: true,
      allowPrivateNetworks: false,
      otelServiceName: "webhook-worker"
    })
    expect(Option.isNone(defaults.databaseUrl)).toBe(true)
  })

  it.each([
    ["WORKER_BATCH_SIZE", "ten", "WORKER_BATCH_SIZE: expected an integer from 1 to 10000, got \"ten\""],
    ["WORKER_BATCH_SIZE", "0", "WORKER_BATCH_SIZE: expected an integer from 1 to 10000, got \"0\""],
    ["WORKER_POLL_INTERVAL", "0", "WORKER_POLL_INTERVAL: expected a number greater than 0 to 3600, got \"0\""],
    ["MAX_CONCURRENT_DELIVERIES", "2.5", "MAX_CONCURRENT_DELIVERIES: expected an integer from 1 to 10000, got \"2.5\""],
    ["DELIVERY_TIMEOUT", "-1", "DELIVERY_TIMEOUT: expected a number greater than 0 to 3600, got \"-1\""],
    ["RETRY_BACKOFF_FACTOR", "0.5", "RETRY_BACKOFF_FACTOR: expected a number from 1 to 100, got \"0.5\""],
    ["METRICS_PORT", "70000", "METRICS_PORT: expected an integer from 1 to 65535, got \"70000\""],
    ["METRICS_ENABLED", "maybe", "METRICS_ENABLED: expected true or false, got \"maybe\""],
    ["LOG_LEVEL", "verbose", "LOG_LEVEL: expected one of DEBUG, INFO, WARN, ERROR, got \"verbose\""],
    ["LOG_FORMAT", "xml", "LOG_FORMAT: expected one of json, pretty, got \"xml\""],
    ["DATABASE_URL", "mysql://x", "DATABASE_URL: expected a postgres:// or postgresql:// connection string"],
    ["WEBHOOK_SECRET_ENCRYPTION_KEY", "c2hvcnQ=", "WEBHOOK_SECRET_ENCRYPTION_KEY: expected base64 of 32 random bytes (run `webhook-worker keygen`), got 5 bytes"],
    ["WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS", "q8vTx0H1m7B4cN9yL2kZp5rW3sD6fG8hJ0aE1uI4oY8=,nope!", "WEBHOOK_SECRET_ENCRYPTION_KEY_PREVIOUS: key 2: expected base64 of 32 random bytes (run `webhook-worker keygen`), got characters outside base64"]
  ])("%s=%s is refused with one line naming it", (name, value, message) => {
    const result = loadFrom({ [name]: value })
    expect(Either.isLeft(result)).toBe(true)
    const error = Either.getLeft(result).pipe(Option.getOrThrow)
    expect(error.message).toBe(message)
    expect(error.message).not.toContain("\n")
  })

  it("checks settings against each other", () => {
    expect(Either.getLeft(loadFrom({ DELIVERY_TIMEOUT: "30", WORKER_LEASE_SECONDS: "20" })).pipe(Option.map((e) => e.message)))
      .toEqual(Option.some("WORKER_LEASE_SECONDS: must be longer than DELIVERY_TIMEOUT (30s), got 20s"))
    expect(Either.getLeft(loadFrom({ RETRY_BASE_DELAY: "60", RETRY_MAX_DELAY: "10" })).pipe(Option.map((e) => e.message)))
      .toEqual(Option.some("RETRY_MAX_DELAY: must be at least RETRY_BASE_DELAY (60s), got 10s"))
  })

  it("derives the lease from the timeout, accepts decimals and never exposes the key", () => {
    const settings = Either.getOrThrow(loadFrom({
      DELIVERY_TIMEOUT: "2.5",
      RETRY_BASE_DELAY: "0.25",
      WEBHOOK_SECRET_ENCRYPTION_KEY: "q8vTx0H1m7B4cN9yL2kZp5rW3sD6fG8hJ0aE1uI4oY8=",
      LOG_LEVEL: "warning"
    }))
    expect(settings.leaseMs).toBe(10_000)
    expect(settings.retryBaseDelayMs).toBe(250)
    expect(settings.logLevel).toBe("WARN")
    expect(String(settings.encryptionKey)).not.toContain("q8vTx0")
    expect(JSON.stringify(settings)).not.toContain("q8vTx0")
    expect(Option.map(settings.encryptionKey, Redacted.value)).toEqual(Option.some("q8vTx0H1m7B4cN9yL2kZp5rW3sD6fG8hJ0aE1uI4oY8="))
  })

  it("the env file wins over the environment, and an empty value means unset", () => {
    const provider = providerFrom({ WORKER_BATCH_SIZE: "7", LOG_LEVEL: "DEBUG" }, new Map([["WORKER_BATCH_SIZE", "20"], ["LOG_LEVEL", ""]]))
    const settings = Effect.runSync(load.pipe(Effect.withConfigProvider(provider)))
    expect(settings.batchSize).toBe(20)
    expect(settings.logLevel).toBe("INFO")
  })

  it("an empty value is unset under any provider", () => {
    expect(Either.getOrThrow(loadFrom({ WORKER_BATCH_SIZE: "", DATABASE_URL: " " })).batchSize).toBe(10)
  })

  it("parses env files as systemd and dotenv do", () => {
    const parsed = parseEnvFile([
      "# comment",
      "export DATABASE_URL=postgresql://u:p@localhost:5432/db",
      "LOG_LEVEL = DEBUG   # inline comment",
      "QUOTED=\"a b\\nc\"",
      "SINGLE='x # y'",
      ""
    ].join("\n"), "test.env")
    expect(parsed).toEqual(new Map([
      ["DATABASE_URL", "postgresql://u:p@localhost:5432/db"],
      ["LOG_LEVEL", "DEBUG"],
      ["QUOTED", "a b\nc"],
      ["SINGLE", "x # y"]
    ]))
    expect(parseEnvFile("NOT A LINE", "bad.env")).toMatchObject({ variable: "bad.env:1", reason: "expected KEY=value" })
  })

  it("reports which settings a reload changed", () => {
    const next = { ...defaults, batchSize: 99, encryptionKey: Option.some(Redacted.make("k")) }
    expect(changedSettings(defaults, next)).toEqual(["encryptionKey", "batchSize"])
  })
})
