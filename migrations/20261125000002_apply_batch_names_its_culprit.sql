-- Two changes to the batch function, both for errors that are not permanent (not in the
-- `permanent` list the forwarder passes):
--
-- 1. Such an error is raised again with the batch index of the transaction that was being
--    applied, as the last line of its DETAIL (`opsdb_apply_batch: batch index N`). Code,
--    message, detail and hint are kept. The forwarder counts the failures per transaction:
--    an error that repeats for the same one (a trigger on the primary that rejects it with
--    P0001, say) is not a crash loop any more, see (2).
-- 2. A transaction given with an `opsdb_reject` member ({"sqlstate": …, "message": …}) is
--    not applied: it is `dead` with that SQLSTATE and message, unless it is already in the
--    ledger (then `skipped`: an earlier attempt committed it). The forwarder sends a
--    transaction this way after it failed alone with the same kind of error
--    `forwarder.max_attempts` times.
CREATE OR REPLACE FUNCTION opsdb_apply_batch(batch jsonb, permanent text[])
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
    claimed  int;
    done     boolean := n = 0;
    err_state  text;
    err_msg    text;
    err_detail text;
    err_hint   text;
BEGIN
    WHILE NOT done LOOP
        BEGIN
            FOR i IN 0 .. n - 1 LOOP
                cur := i;
                CONTINUE WHEN outcomes[i + 1] = 'dead';
                tx := batch -> i;
                IF tx ? 'opsdb_reject' THEN
                    IF EXISTS (SELECT 1 FROM applied_transaction
                               WHERE transaction_id = (tx ->> 'id')::uuid) THEN
                        outcomes[i + 1] := 'skipped';
                    ELSE
                        outcomes[i + 1] := 'dead';
                        states[i + 1] := tx -> 'opsdb_reject' ->> 'sqlstate';
                        messages[i + 1] := tx -> 'opsdb_reject' ->> 'message';
                    END IF;
                    CONTINUE;
                END IF;
                INSERT INTO applied_transaction (transaction_id, site, stream_id, op)
                VALUES ((tx ->> 'id')::uuid, tx ->> 'site', tx ->> 'stream_id', tx ->> 'op')
                ON CONFLICT (transaction_id) DO NOTHING;
                GET DIAGNOSTICS claimed = ROW_COUNT;
                IF claimed = 0 THEN
                    outcomes[i + 1] := 'skipped';
                    CONTINUE;
                END IF;
                FOR step IN SELECT value FROM jsonb_array_elements(tx -> 'steps') LOOP
                    PERFORM opsdb_apply_step(step);
                END LOOP;
                outcomes[i + 1] := 'applied';
            END LOOP;
            done := true;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            IF NOT (err_state = ANY (permanent) OR left(err_state, 2) = ANY (permanent)) THEN
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                    DETAIL = concat_ws(E'\n', nullif(err_detail, ''),
                                       'opsdb_apply_batch: batch index ' || cur),
                    HINT = coalesce(err_hint, '');
            END IF;
            -- The rollback of the block took this transaction's ledger claim with it.
            outcomes[cur + 1] := 'dead';
            states[cur + 1] := err_state;
            messages[cur + 1] := err_msg;
        END;
    END LOOP;
    RETURN QUERY SELECT i - 1, outcomes[i], states[i], messages[i] FROM generate_series(1, n) AS i;
END
$$;
