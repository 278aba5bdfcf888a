-- The ledger row of a transaction is claimed before its steps run, with ON CONFLICT DO
-- NOTHING, instead of checked with EXISTS and inserted after them.
--
-- Why: a batch retried while its previous attempt is still running on the primary (the
-- forwarder gave up waiting, reconnected and sent it again) used to run the steps a second
-- time, block on the first attempt's uncommitted rows, and once that attempt committed,
-- fail with unique_violation (23505), which is permanent: an applied transaction was
-- dead-lettered. Now the second attempt blocks on the first one's ledger row instead, and
-- when that commits, DO NOTHING inserts nothing: the transaction is `skipped`, its steps
-- never run twice. If the first attempt rolls back, the second one claims the row and
-- applies the transaction.
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
    err_state text;
    err_msg   text;
BEGIN
    WHILE NOT done LOOP
        BEGIN
            FOR i IN 0 .. n - 1 LOOP
                cur := i;
                CONTINUE WHEN outcomes[i + 1] = 'dead';
                tx := batch -> i;
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
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT;
            IF NOT (err_state = ANY (permanent) OR left(err_state, 2) = ANY (permanent)) THEN
                RAISE;
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
