/**
 * What host applications import from `webhook-worker` (README "Use from your application").
 * The CLI and the worker's internals are not part of this surface.
 */

// == Effect API: queue inside the host's transaction; the worker as a layer of the host's runtime

/** `WebhookQueue.WebhookQueue` (service), `WebhookQueue.layer`, `WebhookQueue.enqueue`, `WebhookQueue.enqueueMany`. */
export * as WebhookQueue from "./host/WebhookQueue.js"

/** `WebhookWorker.layer(options)`: needs the host's PgClient; drains when the host's scope closes. */
export * as WebhookWorker from "./host/WebhookWorker.js"

// == Promise API, for apps that do not use Effect

export {
  createWebhookClient,
  type DatabaseConnection,
  type EnqueueOptions,
  isEnqueueError,
  type RunningWorker,
  startWebhookWorker,
  type WebhookClient,
  type WebhookClientOptions,
  type WebhookWorkerOptions
} from "./host/Client.js"

// == Requests, results and the errors a host can act on (shared by both APIs)

export { ConfigInvalid } from "./config/AppConfig.js"
export type { SettingsSource, WorkerSettings } from "./host/HostConfig.js"
export {
  type Destination,
  EndpointIsDisabled,
  EndpointNotFound,
  type Enqueued,
  type EnqueueError,
  type EnqueueRequest,
  EventTypeNotSubscribed,
  InvalidEnqueueRequest
} from "./queue/Enqueue.js"

// == For receivers (also `webhook-worker/receiver`: the verifier alone, without the worker)

export { SignatureInvalid, type VerifyOptions, verifyWebhook, type WebhookEvent, type WebhookHeaders } from "./host/Receiver.js"
