-- The roles ops-db-api logs in as, with the least each needs. Run once on the primary,
-- after `ops-db-api migrate`, as the schema owner (the role of forwarder.migrate_url):
--
--   psql "$MIGRATE_URL" -v ON_ERROR_STOP=1 -f packaging/postgres/roles.sql
--
-- then give each login role a password (`\password opsdb_forwarder` in psql) or a client
-- certificate, and allow it in pg_hba.conf with `hostssl` only. The roles replicate to the
-- streaming replicas with everything else.
--
--   opsdb_forwarder  forwarder.primary_url: may only call opsdb_apply_batch, which writes the
--                    rows and the ledger as the schema owner (see the migration
--                    20261204000001_apply_batch_as_owner.sql). No table privilege at all.
--   opsdb_reader     replica.url (and, on the main site, the primary for reads): reads the
--                    tables, the ledger and the API tokens (api_token); writes nothing.
--
-- Schema changes and `ops-db-api token create` use forwarder.migrate_url (the schema owner),
-- never these roles.

CREATE ROLE opsdb_forwarder LOGIN;
CREATE ROLE opsdb_reader LOGIN;

GRANT USAGE ON SCHEMA public TO opsdb_forwarder, opsdb_reader;
GRANT EXECUTE ON FUNCTION opsdb_apply_batch(jsonb, text[]) TO opsdb_forwarder;
GRANT SELECT ON obs_unit, executed_obs_unit, raw_data_package, raw_data_file,
                applied_transaction, api_token
   TO opsdb_reader;
