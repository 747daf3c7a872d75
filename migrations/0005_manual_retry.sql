-- The deployment guide's manual retry, "Reset status to 'pending'" (UPDATE … SET status =
-- 'pending' on a dead letter), now does what it says:
--
-- 1. The row gets one more attempt. Only a lease that expired after the last attempt began (a
--    worker that crashed mid-attempt) is dead-lettered unattempted: the worker never leaves a
--    pending or failed row without attempts, so such a row was put there on purpose. Its attempt
--    count stays at max_attempts (the claim never counts past it), so that attempt is the last:
--    a failure dead-letters it again. `webhook-worker dlq retry` resets the count instead and
--    grants every attempt.
-- 2. The row is due at once. A settled row keeps the next_retry_at its claim set (the lease's
--    end, up to WORKER_LEASE_SECONDS ahead), which a reset alone would have left in place; the
--    trigger moves it to now() unless the same UPDATE set next_retry_at itself. It fires only for
--    a settled row put back, so claims and results pay for its WHEN clause alone.

CREATE OR REPLACE FUNCTION webhook_claim_deliveries(p_worker text, p_lease_ms double precision, p_limit integer)
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
    SELECT d.id, d.status = 'processing' AS reclaimed,
           d.status = 'processing' AND d.attempt_count >= d.max_attempts AS exhausted
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

CREATE FUNCTION webhook_delivery_queue_requeued_due() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.next_retry_at := now();
  RETURN NEW;
END
$$;

CREATE TRIGGER trg_wdq_requeued_due
  BEFORE UPDATE OF status ON webhook_delivery_queue
  FOR EACH ROW
  WHEN (OLD.status IN ('delivered', 'dead_letter') AND NEW.status IN ('pending', 'failed')
        AND NEW.next_retry_at IS NOT DISTINCT FROM OLD.next_retry_at)
  EXECUTE FUNCTION webhook_delivery_queue_requeued_due();
