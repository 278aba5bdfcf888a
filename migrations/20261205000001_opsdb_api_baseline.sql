-- ops-db-api's own objects on the primary, all in its own schema (`opsdb_api`; `migrate`
-- replaces that name by `schema.name` before running this file, and creates the schema
-- first). The service was never deployed, so this one baseline replaced the migrations
-- that had grown before it (they created ops-db's tables in `public` with columns chosen
-- here, which ops-db already has with other columns).
--
-- Nothing here creates or alters a table of ops-db: the service writes ops-db's tables only
-- through `opsdb_api.apply_batch`, and only those listed in `opsdb_api.writable_table`,
-- which `migrate` keeps in step with the config's `schema.tables`.
--
-- Every function runs with `search_path = pg_catalog, pg_temp` and names every object of
-- this schema in full: a role that may create objects in some schema (`public`, before
-- PostgreSQL 15) cannot make a name used here resolve to an object of its own.
--
-- A later migration that replaces a function with CREATE OR REPLACE must state
-- SECURITY DEFINER and the search_path again: CREATE OR REPLACE resets them.

CREATE SCHEMA IF NOT EXISTS opsdb_api;

-- Every transaction applied on this primary, written in the same database transaction as
-- its rows: a replay after a crash between commit and acknowledgement finds it here and
-- is skipped. commit_lsn stays NULL: a transaction cannot know its own commit LSN; the
-- forwarder records the LSN it read after the commit in Redis.
CREATE TABLE opsdb_api.applied_transaction (
    transaction_id uuid PRIMARY KEY,
    site           text NOT NULL,
    stream_id      text NOT NULL,
    op             text NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    commit_lsn     pg_lsn
);

-- API tokens kept in the database where ops-db has no `api_token` of its own: created at
-- the main site (`ops-db-api token create`), replicated to every site's read source, read
-- by the service through a short-lived cache (`auth.cache_ttl`). Only the SHA-256 of a
-- token is stored, never the token.
CREATE TABLE opsdb_api.api_token (
    sha256     text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    name       text NOT NULL CHECK (name <> ''),
    scopes     text[] NOT NULL CHECK (scopes <@ ARRAY['write', 'read', 'admin']::text[]
                                      AND cardinality(scopes) > 0),
    expires_at timestamptz,
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The allowlist: the tables of ops-db that the batch function may write, each with its
-- one-column primary key. Kept by `migrate` from the config's `schema.tables` (rows not
-- listed are deleted); the batch function reads it, never the transaction's JSON alone.
CREATE TABLE opsdb_api.writable_table (
    table_name   text PRIMARY KEY,
    table_schema text NOT NULL,
    key_column   text NOT NULL
);

-- What the batch function needs of one writable table: its qualified name (quoted), its
-- key column and its live columns: {"rel": …, "key": …, "columns": [...]}. A table not in
-- the allowlist is a permanent error (22023: the transaction can never apply); a listed
-- table gone from the catalog is not (42P01: the primary's schema, retried, never
-- dead-lettered).
CREATE FUNCTION opsdb_api.writable_entry(tbl text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w       record;
    columns jsonb;
BEGIN
    SELECT t.table_schema, t.key_column INTO w
      FROM opsdb_api.writable_table t WHERE t.table_name = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s is not writable through ops-db-api', coalesce(tbl, 'null'));
    END IF;
    SELECT jsonb_agg(a.attname::text) INTO columns
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
      JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
     WHERE s.nspname = w.table_schema AND c.relname = tbl AND c.relkind IN ('r', 'p')
       AND a.attnum > 0 AND NOT a.attisdropped;
    IF columns IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42P01',
            MESSAGE = format('writable table %I.%I does not exist', w.table_schema, tbl);
    END IF;
    RETURN jsonb_build_object('rel', format('%I.%I', w.table_schema, tbl),
                              'key', w.key_column, 'columns', columns);
END
$$;

-- Applies one step, given its table's entry (see writable_entry):
--   {"kind": "insert", "table": T, "id": ID, "values": {col: value, ...}}
--   {"kind": "update", "table": T, "id": ID, "set": {col: value, ...}}
--   {"kind": "delete", "table": T, "id": ID}
-- ID is the key column's value (a JSON string or number; an insert without one takes its
-- values as they are, its key among them or left to the column's default). Identifiers come from the
-- allowlist and the catalog only, quoted; values go in as one JSON parameter, typed by the
-- table's own row type. Permanent errors (22023): an unknown kind, a column that is not a
-- live column of the table, an id that is neither a string nor a number, an insert whose
-- values name another key. An update or delete of a row that does not exist: P0002.
CREATE FUNCTION opsdb_api.apply_step(step jsonb, entry jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text := step ->> 'kind';
    rel  text := entry ->> 'rel';
    key  text := entry ->> 'key';
    id   jsonb := step -> 'id';
    live jsonb := entry -> 'columns';
    vals jsonb;
    bad  text;
    cols text;
    n    bigint := 1;
BEGIN
    IF kind IS NULL OR kind NOT IN ('insert', 'update', 'delete') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown step kind %s', coalesce(kind, 'null'));
    END IF;
    IF (kind <> 'insert' OR id IS NOT NULL)
       AND (jsonb_typeof(id) IS NULL OR jsonb_typeof(id) NOT IN ('string', 'number')) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s step on %s: id must be a string or a number', kind, rel);
    END IF;
    IF kind = 'delete' THEN
        EXECUTE format('DELETE FROM %s WHERE %I = (SELECT %I FROM jsonb_populate_record(NULL::%s, $1))',
                       rel, key, key, rel)
            USING jsonb_build_object(key, id);
        GET DIAGNOSTICS n = ROW_COUNT;
    ELSE
        vals := step -> CASE kind WHEN 'insert' THEN 'values' ELSE 'set' END;
        IF jsonb_typeof(vals) IS DISTINCT FROM 'object' OR vals = '{}'::jsonb THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('%s step on %s sets no column', kind, rel);
        END IF;
        -- One pass over the names: the column list, and the first name that is not live.
        SELECT string_agg(format('%I', k), ', '), min(k) FILTER (WHERE NOT live ? k)
          INTO cols, bad FROM jsonb_object_keys(vals) AS k;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('column %s is not a column of %s', bad, rel);
        END IF;
        IF kind = 'insert' AND id IS NOT NULL THEN
            IF NOT vals ? key THEN
                vals := vals || jsonb_build_object(key, id);
                cols := cols || format(', %I', key);
            ELSIF vals ->> key IS DISTINCT FROM id #>> '{}' THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('insert into %s: its %s is not the step''s id', rel, key);
            END IF;
        END IF;
        IF kind = 'insert' THEN
            EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM jsonb_populate_record(NULL::%s, $1)',
                           rel, cols, cols, rel)
                USING vals;
        ELSE
            EXECUTE format('UPDATE %s SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1)) '
                           'WHERE %I = (SELECT %I FROM jsonb_populate_record(NULL::%s, $2))',
                           rel, cols, cols, rel, key, key, rel)
                USING vals, jsonb_build_object(key, id);
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
    END IF;
    IF n = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = format('%s %s does not exist', rel, id #>> '{}');
    END IF;
END
$$;

-- Applies `batch` (a JSON array of {id, site, op, stream_id, steps}) in order and returns
-- one row per transaction: applied, skipped (already in the ledger) or dead (rejected for
-- good, with the SQLSTATE and message).
--
-- `permanent` lists the SQLSTATEs or two-character classes that mean "this transaction can
-- never apply" (the forwarder decides that list, in one place). Any other error is raised
-- again with the batch index of the transaction being applied as the last line of its
-- DETAIL (`apply_batch: batch index N`), code, message, detail and hint kept: the whole
-- statement fails, and the forwarder, which counts failures per transaction, retries.
--
-- A transaction given with an `opsdb_reject` member ({"sqlstate": …, "message": …}) is not
-- applied: it is `dead` with that error, unless it is already in the ledger (`skipped`: an
-- earlier attempt committed it). The forwarder sends a transaction so after it failed alone
-- with the same kind of error `forwarder.max_attempts` times.
--
-- Each transaction claims its ledger row before its steps: a retry that overlaps its
-- first attempt waits on the row lock, then finds it `skipped`.
--
-- A batch's cost stays linear in its size whatever fails. The batch runs in blocks, each
-- one subtransaction. A block starts where the last committed block ended and runs to the
-- end of the batch. When a transaction in it fails for good, the block rolls back, that
-- transaction is `dead`, and the good ones before it in the block are redone as a block of
-- their own that ends just before it; the next block starts just after it. So every good
-- transaction is applied at most twice, every dead one once, and a batch without dead
-- transactions is one subtransaction (clear of the 64-subtransaction cache overflow that
-- slows hot-standby replicas); each dead one adds at most two committed subtransactions.
--
-- The allowlist and the catalog are read once per table per batch (`tables`, a variable:
-- it survives the rollback of a block), not once per step: a bulk of 1,000 files is one
-- lookup.
--
-- SECURITY DEFINER: the forwarder's role has no table privilege at all, only EXECUTE on
-- this function (packaging/postgres/roles.sql); it writes as its owner, the role that ran
-- `migrate`. PUBLIC's default EXECUTE is revoked below.
CREATE FUNCTION opsdb_api.apply_batch(batch jsonb, permanent text[])
RETURNS TABLE (idx int, outcome text, sqlstate text, message text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n        int := jsonb_array_length(batch);
    outcomes text[] := array_fill(NULL::text, ARRAY[n]);
    states   text[] := array_fill(NULL::text, ARRAY[n]);
    messages text[] := array_fill(NULL::text, ARRAY[n]);
    tables   jsonb := '{}';  -- writable_entry by table name, for this batch
    first    int := 0;      -- the block's first transaction: all before it are committed
    last     int := n - 1;  -- the block's last transaction
    cur      int;  -- the transaction being applied; survives the rollback of the block
    tx       jsonb;
    step     jsonb;
    tbl      text;
    entry    jsonb;
    claimed  int;
    err_state  text;
    err_msg    text;
    err_detail text;
    err_hint   text;
BEGIN
    WHILE first < n LOOP
        BEGIN
            FOR i IN first .. last LOOP
                cur := i;
                CONTINUE WHEN outcomes[i + 1] = 'dead';
                tx := batch -> i;
                IF tx ? 'opsdb_reject' THEN
                    IF EXISTS (SELECT 1 FROM opsdb_api.applied_transaction a
                               WHERE a.transaction_id = (tx ->> 'id')::uuid) THEN
                        outcomes[i + 1] := 'skipped';
                    ELSE
                        outcomes[i + 1] := 'dead';
                        states[i + 1] := tx -> 'opsdb_reject' ->> 'sqlstate';
                        messages[i + 1] := tx -> 'opsdb_reject' ->> 'message';
                    END IF;
                    CONTINUE;
                END IF;
                INSERT INTO opsdb_api.applied_transaction (transaction_id, site, stream_id, op)
                VALUES ((tx ->> 'id')::uuid, tx ->> 'site', tx ->> 'stream_id', tx ->> 'op')
                ON CONFLICT (transaction_id) DO NOTHING;
                GET DIAGNOSTICS claimed = ROW_COUNT;
                IF claimed = 0 THEN
                    outcomes[i + 1] := 'skipped';
                    CONTINUE;
                END IF;
                FOR step IN SELECT value FROM jsonb_array_elements(tx -> 'steps') LOOP
                    tbl := step ->> 'table';
                    entry := tables -> tbl;
                    IF entry IS NULL THEN
                        entry := opsdb_api.writable_entry(tbl);
                        tables := tables || jsonb_build_object(tbl, entry);
                    END IF;
                    PERFORM opsdb_api.apply_step(step, entry);
                END LOOP;
                outcomes[i + 1] := 'applied';
            END LOOP;
            -- The block committed: the next one starts after it and runs to the end.
            first := last + 1;
            last := n - 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            IF NOT (err_state = ANY (permanent) OR left(err_state, 2) = ANY (permanent)) THEN
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                    DETAIL = concat_ws(E'\n', nullif(err_detail, ''),
                                       'apply_batch: batch index ' || cur),
                    HINT = coalesce(err_hint, '');
            END IF;
            -- The rollback of the block took this transaction's ledger claim with it, and
            -- the work of the block's transactions before it: those are redone alone.
            outcomes[cur + 1] := 'dead';
            states[cur + 1] := err_state;
            messages[cur + 1] := err_msg;
            IF cur = first THEN
                first := cur + 1;
                last := n - 1;
            ELSE
                last := cur - 1;
            END IF;
        END;
    END LOOP;
    RETURN QUERY SELECT i - 1, outcomes[i], states[i], messages[i] FROM generate_series(1, n) AS i;
END
$$;

-- Nobody but the owner and the roles granted it (roles.sql) may call these: PostgreSQL
-- grants EXECUTE to PUBLIC by default.
REVOKE EXECUTE ON FUNCTION opsdb_api.apply_batch(jsonb, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION opsdb_api.apply_step(jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION opsdb_api.writable_entry(text) FROM PUBLIC;
