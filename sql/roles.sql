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
-- change their URLs or secrets, or delete anything; see DEPLOYMENT.md "Database Permissions"
-- (and README.md "Database roles") for the commands that need the owner (migrate, endpoints
-- add/rotate-secret, rotate-key, dlq archive, cleanup). The password is not set here, so this
-- file holds no secret.
--
-- Database-wide: it revokes CREATE on schema public from PUBLIC (see below). Run it as a
-- superuser or the owner of schema public (the `postgres` role of DEPLOYMENT.md).

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

-- PostgreSQL 12 to 14 let PUBLIC, and so every role, create objects in schema public (15 made
-- that the schema owner's alone): there the role could create tables. A right of PUBLIC cannot
-- be taken from one role, so it is revoked from PUBLIC, for this whole database; PostgreSQL 15+
-- starts that way. Roles that create objects in public without owning it (other applications'
-- migration roles) then need their own GRANT CREATE ON SCHEMA public TO <role>. (Temporary
-- tables, which PUBLIC may create on every version, last only as long as the session.)
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- A REVOKE by a role without the right to revoke only warns: check, and stop if the role
-- could still create objects (psql -v ON_ERROR_STOP=1 makes this error fatal).
DO $$
BEGIN
  IF has_schema_privilege('webhook_worker', 'public', 'CREATE') THEN
    RAISE EXCEPTION 'webhook_worker can still create objects in schema public: run sql/roles.sql as a superuser or the owner of schema public, and do not GRANT CREATE on it to PUBLIC or to webhook_worker';
  END IF;
  IF has_database_privilege('webhook_worker', current_database(), 'CREATE') THEN
    RAISE EXCEPTION 'webhook_worker can create schemas in database %: REVOKE CREATE ON DATABASE % FROM PUBLIC (and from webhook_worker)', current_database(), current_database();
  END IF;
END
$$;

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
-- 4. The worker claims and records through these (migrations/0003_claim_functions.sql, 0004_claim_plans.sql); they run
--    with the caller's rights, so the table grants above still decide what they may touch.
GRANT EXECUTE ON FUNCTION webhook_claim_deliveries(text, double precision, integer) TO webhook_worker;
GRANT EXECUTE ON FUNCTION webhook_enqueue_deliveries(uuid[], text[], uuid[], text[], text[], text[], text[], integer[], double precision[], timestamptz[], text[], text[]) TO webhook_worker;
GRANT EXECUTE ON FUNCTION webhook_complete_deliveries(text, uuid[], integer[], text[], double precision[], integer[], text[], text[], text[], double precision[], uuid[], boolean) TO webhook_worker;

-- Not needed, and therefore not granted: USAGE on webhook_delivery_log's identity sequence
-- (identity columns draw their values without a sequence privilege), DELETE anywhere,
-- cleanup_delivered_webhooks(), the dead-letter archive, and LISTEN/pg_notify (no privilege).
