-- The queue's hot statements as PL/pgSQL functions. PL/pgSQL keeps each statement's plan
-- for the session, so a claim or a batch completion is not planned again on every call (about
-- half a millisecond each, measured) whichever client calls it: the worker's own pool, a host
-- application's PgClient, or a connection pooler. They are also the SQL-level API of the queue.

-- Claims up to p_limit due rows for p_worker: one short statement that commits before any HTTP.
-- The row becomes 'processing', locked by p_worker until now() + p_lease_ms; next_retry_at is set
-- to the same time, so a crashed worker's rows fall due again through the same index and claim.
CREATE FUNCTION webhook_claim_deliveries(p_worker text, p_lease_ms double precision, p_limit integer)
RETURNS TABLE (
  id text, user_id text, endpoint_id text, endpoint_enabled boolean, url text, secret text,
  secret_from_row boolean, previous_secret text, event_type text, payload text,
  created_at_ms double precision, attempt integer, max_attempts integer, traceparent text, reclaimed boolean
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH due AS (
    SELECT d.id, d.status = 'processing' AS reclaimed
    FROM webhook_delivery_queue d
    WHERE d.status IN ('pending', 'failed', 'processing') AND d.next_retry_at <= now()
    ORDER BY d.next_retry_at
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  ), claimed AS (
    UPDATE webhook_delivery_queue q
    SET status = 'processing',
        locked_by = p_worker,
        locked_until = now() + p_lease_ms * interval '1 millisecond',
        next_retry_at = now() + p_lease_ms * interval '1 millisecond',
        attempt_count = q.attempt_count + 1,
        "updatedAt" = now()
    FROM due
    WHERE q.id = due.id
    RETURNING q.id, q."userId", q.partner_webhook_id, q.url, q.secret, q.event_type, q.payload,
              q.attempt_count, q.max_attempts, q.traceparent, q."createdAt", due.reclaimed
  )
  SELECT c.id::text,
         c."userId",
         c.partner_webhook_id::text,
         p.enabled,
         COALESCE(p.url, c.url),
         COALESCE(c.secret, p.secret),
         c.secret IS NOT NULL,
         CASE WHEN p.previous_secret_expires_at > now() THEN p.previous_secret END,
         c.event_type,
         c.payload::text,
         (extract(epoch FROM c."createdAt") * 1000)::double precision,
         c.attempt_count,
         c.max_attempts,
         c.traceparent,
         c.reclaimed
  FROM claimed c
  LEFT JOIN partner_webhooks p ON p.id = c.partner_webhook_id;
END
$$;

-- Records a batch of attempt results: the row updates, guarded by lease owner and attempt number
-- (a worker whose lease passed to another cannot overwrite a newer attempt), and, with p_audit,
-- one webhook_delivery_log row per recorded attempt. Returns the ids whose update held.
CREATE FUNCTION webhook_complete_deliveries(
  p_worker text, p_ids uuid[], p_attempts integer[], p_statuses text[], p_retry_delay_ms double precision[],
  p_response_statuses integer[], p_errors text[], p_reasons text[], p_response_bodies text[],
  p_duration_ms double precision[], p_store_secrets text[], p_audit boolean
)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY
  WITH o AS (
    SELECT * FROM unnest(p_ids, p_attempts, p_statuses, p_retry_delay_ms, p_response_statuses, p_errors, p_reasons,
                         p_response_bodies, p_duration_ms, p_store_secrets)
      AS o(id, attempt, status, retry_delay_ms, response_status, error, reason, response_body, duration_ms, store_secret)
  ), updated AS (
    UPDATE webhook_delivery_queue q
    SET status = o.status,
        last_response_status = o.response_status,
        last_error = o.error,
        next_retry_at = CASE WHEN o.status = 'failed' THEN now() + o.retry_delay_ms * interval '1 millisecond' ELSE q.next_retry_at END,
        delivered_at = CASE WHEN o.status = 'delivered' THEN now() ELSE q.delivered_at END,
        locked_by = NULL,
        locked_until = NULL,
        secret = COALESCE(o.store_secret, q.secret),
        "updatedAt" = now()
    FROM o
    WHERE q.id = o.id AND q.locked_by = p_worker AND q.attempt_count = o.attempt AND q.status = 'processing'
    RETURNING q.id
  ), logged AS (
    INSERT INTO webhook_delivery_log
      (delivery_id, attempt, outcome, reason, response_status, error, response_body, duration_ms, worker_id)
    SELECT o.id, o.attempt, o.status, o.reason, o.response_status, o.error, o.response_body, o.duration_ms, p_worker
    FROM o JOIN updated u ON u.id = o.id
    WHERE p_audit
  )
  SELECT u.id::text FROM updated u;
END
$$;

-- Queues rows (the library's and the CLI's enqueue): one row per array index. A row whose
-- idempotency key is already queued for the same destination is skipped; the ids inserted are
-- returned, so the caller can tell duplicates apart. Runs in the caller's transaction.
CREATE FUNCTION webhook_enqueue_deliveries(
  p_ids uuid[], p_user_ids text[], p_endpoint_ids uuid[], p_urls text[], p_secrets text[], p_event_types text[],
  p_payloads text[], p_max_attempts integer[], p_delay_ms double precision[], p_not_before timestamptz[],
  p_idempotency_keys text[], p_traceparents text[]
)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY
  WITH ins AS (
    INSERT INTO webhook_delivery_queue
      (id, "userId", partner_webhook_id, url, secret, event_type, payload, max_attempts, next_retry_at, idempotency_key, traceparent)
    SELECT r.id, r.user_id, r.endpoint_id, r.url, r.secret, r.event_type, r.payload::json, r.max_attempts,
           COALESCE(r.not_before, now() + r.delay_ms * interval '1 millisecond'), r.idempotency_key, r.traceparent
    FROM unnest(p_ids, p_user_ids, p_endpoint_ids, p_urls, p_secrets, p_event_types, p_payloads, p_max_attempts,
                p_delay_ms, p_not_before, p_idempotency_keys, p_traceparents)
      AS r(id, user_id, endpoint_id, url, secret, event_type, payload, max_attempts, delay_ms, not_before, idempotency_key, traceparent)
    ON CONFLICT ((COALESCE(partner_webhook_id::text, url)), idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING webhook_delivery_queue.id
  )
  SELECT ins.id::text FROM ins;
END
$$;
