-- The deployment guide's manual retry, "Reset status to 'pending'" (UPDATE … SET status =
-- 'pending' on a dead letter), now does what `webhook-worker dlq retry` does: a fresh attempt
-- budget, due at once. Before, a row that had used every attempt went straight back to
-- dead_letter unattempted ("no attempts left"), and any row waited first for the next_retry_at
-- its last claim had set (the lease's end, up to WORKER_LEASE_SECONDS ahead).
--
-- Only a settled row (delivered or dead_letter) put back to pending or failed, and only for the
-- columns the same UPDATE leaves as they were: an operator who sets attempt_count or
-- next_retry_at gets what they set. The worker's own hand-backs start from 'processing' and are
-- untouched, so a row whose last attempt was cut short keeps its count and is dead-lettered,
-- never sent more than max_attempts times. Claims and results pay for the WHEN clause alone.

CREATE FUNCTION webhook_delivery_queue_requeued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.attempt_count IS NOT DISTINCT FROM OLD.attempt_count THEN
    NEW.attempt_count := 0;
  END IF;
  IF NEW.next_retry_at IS NOT DISTINCT FROM OLD.next_retry_at THEN
    NEW.next_retry_at := now();
  END IF;
  NEW.locked_by := NULL;
  NEW.locked_until := NULL;
  RETURN NEW;
END
$$;

CREATE TRIGGER trg_wdq_requeued
  BEFORE UPDATE OF status ON webhook_delivery_queue
  FOR EACH ROW
  WHEN (OLD.status IN ('delivered', 'dead_letter') AND NEW.status IN ('pending', 'failed'))
  EXECUTE FUNCTION webhook_delivery_queue_requeued();
