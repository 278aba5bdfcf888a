-- Applying a batch of buffered transactions in one statement (so in one round trip with
-- its BEGIN, COMMIT and the LSN query), each transaction all or nothing, in order.

-- One step: an insert of a whole row, or an update of some columns of one row by id.
-- Column names come from the step's JSON keys and are quoted with %I; tables are a fixed
-- list. An update that matches no row raises no_data_found (P0002).
CREATE FUNCTION opsdb_apply_step(step jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tbl  text := step ->> 'table';
    cols text;
    n    bigint;
BEGIN
    IF tbl NOT IN ('executed_obs_unit', 'raw_data_package', 'raw_data_file') THEN
        RAISE EXCEPTION 'opsdb: unknown table %', tbl USING ERRCODE = '42P01';
    END IF;
    IF step ->> 'kind' = 'insert' THEN
        SELECT string_agg(format('%I', k), ', ') INTO cols FROM jsonb_object_keys(step -> 'values') AS k;
        EXECUTE format('INSERT INTO %I (%s) SELECT %s FROM jsonb_populate_record(NULL::%I, $1)',
                       tbl, cols, cols, tbl)
            USING step -> 'values';
    ELSIF step ->> 'kind' = 'update' THEN
        SELECT string_agg(format('%I', k), ', ') INTO cols FROM jsonb_object_keys(step -> 'set') AS k;
        EXECUTE format('UPDATE %I SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%I, $1)) WHERE id = $2',
                       tbl, cols, cols, tbl)
            USING step -> 'set', (step ->> 'id')::uuid;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            RAISE EXCEPTION 'opsdb: % % does not exist', tbl, step ->> 'id' USING ERRCODE = 'P0002';
        END IF;
    ELSE
        RAISE EXCEPTION 'opsdb: unknown step kind %', step ->> 'kind' USING ERRCODE = '42601';
    END IF;
END
$$;

-- Applies `batch` (a JSON array of {id, site, op, stream_id, steps}) in order and returns
-- one row per transaction: applied, skipped (already in the ledger) or dead (rejected for
-- good, with the SQLSTATE and message).
--
-- `permanent` lists the SQLSTATEs or two-character classes that mean "this transaction can
-- never apply"; any other error is re-raised and fails the whole statement (the caller
-- retries the batch later). The caller decides that list, in one place.
--
-- Poison isolation without a savepoint per transaction: the batch runs in one
-- subtransaction; when a transaction fails for good, that subtransaction rolls back, the
-- transaction is marked dead, and the batch is redone without it. The cost is one
-- subtransaction plus one per dead transaction, which keeps clear of the 64-subtransaction
-- cache overflow that slows hot-standby replicas.
CREATE FUNCTION opsdb_apply_batch(batch jsonb, permanent text[])
RETURNS TABLE (idx int, outcome text, sqlstate text, message text)
LANGUAGE plpgsql AS $$
DECLARE
    n        int := jsonb_array_length(batch);
    outcomes text[] := array_fill(NULL::text, ARRAY[n]);
    states   text[] := array_fill(NULL::text, ARRAY[n]);
    messages text[] := array_fill(NULL::text, ARRAY[n]);
    cur      int;  -- the transaction being applied; survives the rollback of the block
    tx       jsonb;
    step     jsonb;
    done     boolean := n = 0;
    err_state text;
    err_msg   text;
BEGIN
    WHILE NOT done LOOP
        BEGIN
            FOR i IN 0 .. n - 1 LOOP
                cur := i;
                CONTINUE WHEN outcomes[i + 1] = 'dead';
                tx := batch -> i;
                IF EXISTS (SELECT 1 FROM applied_transaction WHERE transaction_id = (tx ->> 'id')::uuid) THEN
                    outcomes[i + 1] := 'skipped';
                    CONTINUE;
                END IF;
                FOR step IN SELECT value FROM jsonb_array_elements(tx -> 'steps') LOOP
                    PERFORM opsdb_apply_step(step);
                END LOOP;
                INSERT INTO applied_transaction (transaction_id, site, stream_id, op)
                VALUES ((tx ->> 'id')::uuid, tx ->> 'site', tx ->> 'stream_id', tx ->> 'op');
                outcomes[i + 1] := 'applied';
            END LOOP;
            done := true;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT;
            IF NOT (err_state = ANY (permanent) OR left(err_state, 2) = ANY (permanent)) THEN
                RAISE;
            END IF;
            outcomes[cur + 1] := 'dead';
            states[cur + 1] := err_state;
            messages[cur + 1] := err_msg;
        END;
    END LOOP;
    RETURN QUERY SELECT i - 1, outcomes[i], states[i], messages[i] FROM generate_series(1, n) AS i;
END
$$;
