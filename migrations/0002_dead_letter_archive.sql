-- Archive of old dead letters (`webhook-worker dlq archive --older-than DAYS`): the guide's
-- "Archive old failures: move to separate table for analysis". Rows leave the queue, so its
-- dead-letter index and `dlq list` stay small, and keep what analysis needs.
--
-- The signing secret is deliberately not archived: an archive is for analysis, and a table of
-- secrets nobody re-encrypts would outlive every key rotation. Endpoint rows keep
-- partner_webhook_id (the endpoint holds the secret). No foreign key: an endpoint may be deleted
-- while its history stays. Attempt history stays in webhook_delivery_log (by delivery_id).

CREATE TABLE webhook_dead_letter_archive (
  id                    uuid PRIMARY KEY,
  "userId"              text,
  partner_webhook_id    uuid,
  url                   text,
  event_type            text NOT NULL,
  payload               json NOT NULL,
  attempt_count         integer NOT NULL,
  max_attempts          integer NOT NULL,
  last_response_status  integer,
  last_error            text,
  idempotency_key       text,
  traceparent           text,
  "createdAt"           timestamptz NOT NULL,
  -- The queue row's "updatedAt" when it was archived: when it was dead-lettered.
  dead_lettered_at      timestamptz NOT NULL,
  archived_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idx_wdla_archived_at ON webhook_dead_letter_archive (archived_at);

CREATE INDEX idx_wdla_partner ON webhook_dead_letter_archive (partner_webhook_id)
  WHERE partner_webhook_id IS NOT NULL;
