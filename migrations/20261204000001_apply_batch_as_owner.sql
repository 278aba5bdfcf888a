-- Least privilege for the forwarder: its role gets no table privileges at all, only
-- EXECUTE on the batch function (see packaging/postgres/roles.sql). The function runs as
-- its owner (the schema owner who ran the migrations), with a fixed search_path so that a
-- caller's own objects (a temporary table named like ours, say) cannot stand in for ours.
--
-- Nobody else may call either function: PostgreSQL grants EXECUTE to PUBLIC by default.
--
-- A later migration that replaces opsdb_apply_batch with CREATE OR REPLACE must state
-- SECURITY DEFINER and the search_path again: CREATE OR REPLACE resets them.
ALTER FUNCTION opsdb_apply_batch(jsonb, text[]) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION opsdb_apply_batch(jsonb, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION opsdb_apply_step(jsonb) FROM PUBLIC;
