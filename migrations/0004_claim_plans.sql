-- The claim and the batch completion, redefined.
--
-- 1. Plans. A statement in a PL/pgSQL function is planned afresh on every call while PostgreSQL
--    judges a "custom" plan cheaper than the cached generic one. For the old claim the generic
--    plan was a hash join over the whole table (LIMIT p_limit unknown → 10 % of the rows assumed),
--    so every claim was planned again: about 1 ms of server CPU per call, measured, more than the
--    claim itself. These statements are written so that their generic plan is the good one
--    whatever the parameters (index scans by primary key and on idx_wdq_due), and the functions
--    use it: planned once per session.
-- 2. A row whose lease expired with no attempts left is claimed without counting another attempt
--    (attempt_count never exceeds max_attempts); `exhausted` tells the worker to dead-letter it.
-- 3. A 410 disables the endpoint in the same statement that records the attempt, and only when
--    that record held (the worker still had the lease).
-- 4. Both commit without waiting for the WAL flush (synchronous_commit off for their own
--    transaction only). What a server crash can lose is then the last few milliseconds of claims
--    or results, and either way the row is claimed and delivered again (the same webhook-id):
--    the queue's at-least-once promise holds, and a claim no longer waits for an fsync (measured:
--    milliseconds off every wake-up, and a tenth of the server's CPU per claim).
-- Secrets a producer wrote in plaintext are now re-encrypted by their own statement right after
-- the claim, so the completion no longer carries them.

DROP FUNCTION webhook_claim_deliveries(text, double precision, integer);

CREATE FUNCTION webhook_claim_deliveries(p_worker text, p_lease_ms double precision, p_limit integer)
RETURNS TABLE (
  id text, user_id text, endpoint_id text, endpoint_enabled boolean, url text, secret text,
  secret_from_row boolean, previous_secret text, event_type text, payload text,
  created_at_ms double precision, attempt integer, max_attempts integer, traceparent text,
  reclaimed boolean, exhausted boolean
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  RETURN QUERY
  WITH due AS (
    SELECT d.id, d.status = 'processing' AS reclaimed, d.attempt_count >= d.max_attempts AS exhausted
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
        attempt_count = CASE WHEN q.attempt_count >= q.max_attempts THEN q.attempt_count ELSE q.attempt_count + 1 END,
        "updatedAt" = now()
    -- By primary key, whatever the batch size: the generic plan cannot fall back to a hash join.
    WHERE q.id = ANY (ARRAY(SELECT due.id FROM due))
    RETURNING q.id, q."userId", q.partner_webhook_id, q.url, q.secret, q.event_type, q.payload,
              q.attempt_count, q.max_attempts, q.traceparent, q."createdAt"
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
         due.reclaimed,
         due.exhausted
  FROM claimed c
  JOIN due ON due.id = c.id
  LEFT JOIN partner_webhooks p ON p.id = c.partner_webhook_id;
END
$$;

DROP FUNCTION webhook_complete_deliveries(
  text, uuid[], integer[], text[], double precision[], integer[], text[], text[], text[], double precision[], text[], boolean
);

-- Records a batch of attempt results: the row updates, guarded by lease owner and attempt number
-- (a worker whose lease passed to another cannot overwrite a newer attempt); with p_audit one
-- webhook_delivery_log row per recorded attempt; and the endpoints a recorded 410 retired.
-- Returns the ids whose update held.
CREATE FUNCTION webhook_complete_deliveries(
  p_worker text, p_ids uuid[], p_attempts integer[], p_statuses text[], p_retry_delay_ms double precision[],
  p_response_statuses integer[], p_errors text[], p_reasons text[], p_response_bodies text[],
  p_duration_ms double precision[], p_disable_endpoints uuid[], p_audit boolean
)
RETURNS SETOF text
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  RETURN QUERY
  WITH o AS (
    SELECT * FROM unnest(p_ids, p_attempts, p_statuses, p_retry_delay_ms, p_response_statuses, p_errors, p_reasons,
                         p_response_bodies, p_duration_ms, p_disable_endpoints)
      AS o(id, attempt, status, retry_delay_ms, response_status, error, reason, response_body, duration_ms, disable_endpoint)
  ), updated AS (
    UPDATE webhook_delivery_queue q
    SET status = o.status,
        last_response_status = o.response_status,
        last_error = o.error,
        next_retry_at = CASE WHEN o.status = 'failed' THEN now() + o.retry_delay_ms * interval '1 millisecond' ELSE q.next_retry_at END,
        delivered_at = CASE WHEN o.status = 'delivered' THEN now() ELSE q.delivered_at END,
        locked_by = NULL,
        locked_until = NULL,
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
  ), retired AS (
    UPDATE partner_webhooks p
    SET enabled = false, disabled_reason = 'HTTP 410 Gone from the receiver', disabled_at = now(), "updatedAt" = now()
    WHERE p.id = ANY (ARRAY(SELECT o.disable_endpoint FROM o JOIN updated u ON u.id = o.id WHERE o.disable_endpoint IS NOT NULL))
      AND p.enabled
  )
  SELECT u.id::text FROM updated u;
END
$$;

-- Dropping the functions dropped their grants: give them back to the least-privilege role of
-- sql/roles.sql where it exists (run before this migration).
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'webhook_worker') THEN
    GRANT EXECUTE ON FUNCTION webhook_claim_deliveries(text, double precision, integer) TO webhook_worker;
    GRANT EXECUTE ON FUNCTION webhook_complete_deliveries(
      text, uuid[], integer[], text[], double precision[], integer[], text[], text[], text[], double precision[], uuid[], boolean
    ) TO webhook_worker;
  END IF;
END
$$;
