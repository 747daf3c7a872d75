-- webhook-worker schema: endpoints, the delivery queue, the per-attempt audit log.
-- Table, column and function names follow the deployment guide; quoted camelCase
-- columns ("userId", "createdAt") are kept as the guide's producers write them.

-- gen_random_uuid() is built in from PostgreSQL 13; 12 needs pgcrypto.
DO $$
BEGIN
  IF current_setting('server_version_num')::int < 130000 THEN
    CREATE EXTENSION IF NOT EXISTS pgcrypto;
  END IF;
END
$$;

CREATE TABLE partner_webhooks (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  "userId"          text,
  url               text NOT NULL,
  -- Encrypted at rest (enc:v1:<key id>:<data>); see README "Secrets".
  secret            text NOT NULL,
  -- During a secret rotation the old secret keeps signing (a second signature) until this time.
  previous_secret   text,
  previous_secret_expires_at timestamptz,
  -- NULL means every event type.
  event_types       text[],
  enabled           boolean NOT NULL DEFAULT true,
  disabled_reason   text,
  disabled_at       timestamptz,
  "createdAt"       timestamptz NOT NULL DEFAULT now(),
  "updatedAt"       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_delivery_queue (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  "userId"              text,
  -- Set when queued for a registered endpoint: its url and secret are read at
  -- delivery time, so an endpoint's new URL or secret applies to queued rows.
  partner_webhook_id    uuid REFERENCES partner_webhooks (id) ON DELETE SET NULL,
  url                   text,
  -- A producer may write a plaintext secret; the worker encrypts it in place.
  secret                text,
  event_type            text NOT NULL,
  -- json (not jsonb) keeps the producer's exact text: it is what gets signed and sent.
  payload               json NOT NULL,
  status                text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'processing', 'delivered', 'failed', 'dead_letter')),
  -- Counts attempts started: incremented when a worker claims the row.
  attempt_count         integer NOT NULL DEFAULT 0,
  max_attempts          integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  -- When the row is next due. While 'processing' it equals locked_until, so a
  -- row whose worker died becomes due again when its lease runs out.
  next_retry_at         timestamptz NOT NULL DEFAULT now(),
  last_response_status  integer,
  last_error            text,
  idempotency_key       text,
  locked_by             text,
  locked_until          timestamptz,
  -- W3C traceparent of the producer's span, linked from every delivery span.
  traceparent           text,
  delivered_at          timestamptz,
  "createdAt"           timestamptz NOT NULL DEFAULT now(),
  "updatedAt"           timestamptz NOT NULL DEFAULT now()
);

-- The claim index: only rows that can become due are in it, so a claim costs
-- O(batch) however many delivered or dead rows the table holds.
CREATE INDEX idx_wdq_due ON webhook_delivery_queue (next_retry_at)
  WHERE status IN ('pending', 'failed', 'processing');

-- One delivery per (destination, idempotency key).
CREATE UNIQUE INDEX idx_wdq_idempotency
  ON webhook_delivery_queue ((COALESCE(partner_webhook_id::text, url)), idempotency_key)
  WHERE idempotency_key IS NOT NULL;

CREATE INDEX idx_wdq_dead_letter ON webhook_delivery_queue ("updatedAt")
  WHERE status = 'dead_letter';

CREATE INDEX idx_wdq_delivered_at ON webhook_delivery_queue (delivered_at)
  WHERE status = 'delivered';

CREATE INDEX idx_wdq_partner ON webhook_delivery_queue (partner_webhook_id)
  WHERE partner_webhook_id IS NOT NULL;

CREATE TABLE webhook_delivery_log (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  delivery_id      uuid NOT NULL,
  attempt          integer NOT NULL,
  -- The row's status after this attempt: delivered, failed or dead_letter.
  outcome          text NOT NULL,
  -- Machine-readable reason class (http_5xx, timeout, blocked_destination, ...).
  reason           text,
  response_status  integer,
  error            text,
  -- At most 64 KiB of the response body.
  response_body    text,
  duration_ms      double precision,
  worker_id        text,
  "createdAt"      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idx_wdl_delivery ON webhook_delivery_log (delivery_id);

-- Wake workers at once when rows arrive or fall due again. At commit (a deferred trigger), and
-- only if no other transaction is notifying at that moment: PostgreSQL serialises the commits of
-- notifying transactions on one lock, so a NOTIFY in every producer's transaction would cost
-- producers their group commit (measured: about 5x fewer single-row inserts per second). The
-- worker claims once more shortly after each wake, which picks up rows whose commit raced the
-- notifier's. Identical notifications of one transaction are folded into one by PostgreSQL.
CREATE FUNCTION webhook_delivery_queue_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF pg_try_advisory_xact_lock(7204851114) THEN
    PERFORM pg_notify('webhook_delivery_queue', 'due');
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER trg_wdq_notify_insert
  AFTER INSERT ON webhook_delivery_queue
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION webhook_delivery_queue_notify();

-- A row put back to 'pending' (dead-letter retry, hand-back on shutdown) is due now.
CREATE CONSTRAINT TRIGGER trg_wdq_notify_due
  AFTER UPDATE OF status ON webhook_delivery_queue
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status IS DISTINCT FROM 'pending')
  EXECUTE FUNCTION webhook_delivery_queue_notify();

CREATE FUNCTION get_webhook_queue_stats()
RETURNS TABLE (status text, count bigint, oldest_pending timestamptz, avg_attempts numeric)
LANGUAGE sql STABLE AS $$
  SELECT q.status,
         count(*),
         min(q."createdAt"),
         round(avg(q.attempt_count), 2)
  FROM webhook_delivery_queue q
  GROUP BY q.status
  ORDER BY array_position(ARRAY['pending', 'processing', 'failed', 'delivered', 'dead_letter'], q.status)
$$;

-- Removes delivered rows (and their log rows) delivered more than `days` ago.
CREATE FUNCTION cleanup_delivered_webhooks(days integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  removed integer;
BEGIN
  IF days IS NULL OR days < 0 THEN
    RAISE EXCEPTION 'cleanup_delivered_webhooks: days must be >= 0, got %', days;
  END IF;
  WITH gone AS (
    DELETE FROM webhook_delivery_queue
    WHERE status = 'delivered' AND delivered_at < now() - make_interval(days => days)
    RETURNING id
  ), logs AS (
    DELETE FROM webhook_delivery_log l USING gone WHERE l.delivery_id = gone.id
  )
  SELECT count(*) INTO removed FROM gone;
  RETURN removed;
END
$$;
