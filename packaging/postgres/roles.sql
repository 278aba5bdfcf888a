-- The roles ops-db-api logs in as, with the least each needs. Run on the primary after
-- `ops-db-api migrate`, as the schema owner (the role of forwarder.migrate_url):
--
--   psql "$MIGRATE_URL" -v ON_ERROR_STOP=1 -f packaging/postgres/roles.sql
--
-- then give each login role a password (`\password opsdb_forwarder` in psql) or a client
-- certificate, and allow it in pg_hba.conf with `hostssl` only. The roles replicate to the
-- streaming replicas with everything else. Run it again after changing `schema.tables`
-- (and `migrate`): the reader's grants follow the allowlist. With a `schema.name` other
-- than opsdb_api, replace that name below.
--
--   opsdb_forwarder  forwarder.primary_url: may only call opsdb_api.apply_batch, which
--                    writes the rows of the allowed tables and the ledger as the schema
--                    owner (SECURITY DEFINER), and opsdb_api.heartbeat, which upserts its
--                    site's row of opsdb_api.heartbeat the same way. No table privilege
--                    at all.
--   opsdb_reader     replica.url (and, on the main site, the primary for reads): reads the
--                    ledger, the service's token table, the allowed tables, the tables their
--                    foreign keys refer to, ops-db's api_token where it exists, and the
--                    heartbeat table; is a member of pg_read_all_stats (below); writes
--                    nothing.
--
-- Schema changes and `ops-db-api token create` use forwarder.migrate_url (the schema owner),
-- never these roles.

-- Before PostgreSQL 15 every role may create objects in `public`: a name there could stand
-- in for one of ours in a function that does not pin its search_path. Nobody but the
-- owners creates anything there.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'opsdb_forwarder') THEN
        CREATE ROLE opsdb_forwarder LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'opsdb_reader') THEN
        CREATE ROLE opsdb_reader LOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA opsdb_api TO opsdb_forwarder, opsdb_reader;
GRANT EXECUTE ON FUNCTION opsdb_api.apply_batch(jsonb, text[]) TO opsdb_forwarder;
GRANT EXECUTE ON FUNCTION opsdb_api.heartbeat(text) TO opsdb_forwarder;
GRANT SELECT ON opsdb_api.applied_transaction, opsdb_api.api_token, opsdb_api.heartbeat
    TO opsdb_reader;

-- The replica tracker reads the replica's WAL receiver (pg_stat_wal_receiver) to tell a
-- cut stream from a stalled replay. For any role without the privileges of
-- pg_read_all_stats that view shows only the receiver's pid, every other column (status,
-- last_msg_receipt_time, received_tli, ...) NULL. pg_read_all_stats is the smallest
-- predefined role that shows them (pg_monitor contains it and more); it lets the reader
-- read statistics views, not data, and change nothing. Without it the service still
-- works: the receiver's status shows as "hidden" and only its presence counts. Granting a
-- predefined role needs a superuser (or, before PostgreSQL 16, CREATEROLE): if the schema
-- owner is neither, have a superuser run this line.
GRANT pg_read_all_stats TO opsdb_reader;

-- The reader: every allowed table, every table their foreign keys refer to (merged reads
-- and reference checks read the parents), and ops-db's api_token if there is one.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT w.table_schema AS s, w.table_name AS n FROM opsdb_api.writable_table w
        UNION
        SELECT ps.nspname, pc.relname
          FROM opsdb_api.writable_table w
          JOIN pg_catalog.pg_namespace ws ON ws.nspname = w.table_schema
          JOIN pg_catalog.pg_class wc ON wc.relnamespace = ws.oid AND wc.relname = w.table_name
          JOIN pg_catalog.pg_constraint k ON k.conrelid = wc.oid AND k.contype = 'f'
          JOIN pg_catalog.pg_class pc ON pc.oid = k.confrelid
          JOIN pg_catalog.pg_namespace ps ON ps.oid = pc.relnamespace
        UNION
        SELECT n.nspname, c.relname
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = 'api_token' AND n.nspname <> 'opsdb_api'
           AND n.nspname IN (SELECT table_schema FROM opsdb_api.writable_table)
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO opsdb_reader', t.s);
        EXECUTE format('GRANT SELECT ON %I.%I TO opsdb_reader', t.s, t.n);
    END LOOP;
END
$$;
