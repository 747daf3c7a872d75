-- The least-privilege role webhook-worker processes (`webhook-worker run`) connect as.
--
-- Run it in the application database as the role that owns the tables (the one that ran
-- `webhook-worker migrate`), after migrating; it is safe to run again, e.g. after an upgrade:
--
--   psql -d epic_voice_db -v ON_ERROR_STOP=1 -f sql/roles.sql
--   psql -d epic_voice_db -c '\password webhook_worker'
--
-- Then DATABASE_URL=postgresql://webhook_worker:PASSWORD@localhost:5432/epic_voice_db in
-- /etc/webhook-worker/webhook-worker.env. The role cannot change the schema, register endpoints,
-- change their URLs or secrets, or delete anything; see DEPLOYMENT.md "Database roles" for the
-- commands that need the owner (migrate, endpoints add/rotate-secret, rotate-key, dlq archive,
-- cleanup). The password is not set here, so this file holds no secret.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'webhook_worker') THEN
    CREATE ROLE webhook_worker LOGIN;
  END IF;
END
$$;

-- Connect and look up the tables (also where PUBLIC's default rights were revoked).
DO $$
BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO webhook_worker', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO webhook_worker;

-- The deployment guide's grants, unchanged. INSERT on the queue is not used by the worker
-- itself; it lets the same role run `webhook-worker enqueue` (and host apps enqueue).
GRANT SELECT, INSERT, UPDATE ON webhook_delivery_queue TO webhook_worker;
GRANT SELECT ON partner_webhooks TO webhook_worker;
GRANT SELECT, INSERT ON webhook_delivery_log TO webhook_worker;

-- What this implementation needs beyond them:
-- 1. A 410 Gone disables the endpoint. Only these columns: the role cannot touch an endpoint's
--    URL, event types or secrets. (The same columns let it run `endpoints disable|enable`.)
GRANT UPDATE (enabled, disabled_reason, disabled_at, "updatedAt") ON partner_webhooks TO webhook_worker;
-- 2. At start-up the worker checks that every migration has been applied (it never migrates
--    the schema itself without DDL rights; it reads which versions are applied).
GRANT SELECT ON webhook_worker_migrations TO webhook_worker;
-- 3. `webhook-worker stats` calls this (PUBLIC has EXECUTE by default; granted explicitly for
--    databases where that default was revoked).
GRANT EXECUTE ON FUNCTION get_webhook_queue_stats() TO webhook_worker;
-- 4. The worker claims and records through these (migrations/0003_claim_functions.sql); they run
--    with the caller's rights, so the table grants above still decide what they may touch.
GRANT EXECUTE ON FUNCTION webhook_claim_deliveries(text, double precision, integer) TO webhook_worker;
GRANT EXECUTE ON FUNCTION webhook_enqueue_deliveries(uuid[], text[], uuid[], text[], text[], text[], text[], integer[], double precision[], timestamptz[], text[], text[]) TO webhook_worker;
GRANT EXECUTE ON FUNCTION webhook_complete_deliveries(text, uuid[], integer[], text[], double precision[], integer[], text[], text[], text[], double precision[], text[], boolean) TO webhook_worker;

-- Not needed, and therefore not granted: USAGE on webhook_delivery_log's identity sequence
-- (identity columns draw their values without a sequence privilege), DELETE anywhere,
-- cleanup_delivered_webhooks(), the dead-letter archive, and LISTEN/pg_notify (no privilege).
