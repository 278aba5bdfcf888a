-- A batch's cost stays linear in its size whatever fails.
--
-- Before: a dead transaction rolled back the batch's one subtransaction and the batch was
-- redone from its first transaction, so a batch cost (dead transactions) x (rows before
-- them): 300 dead registrations behind 10,000 good rows made the primary insert about
-- three million rows, past any statement timeout, forever.
--
-- Now the batch runs in blocks, each one subtransaction. A block starts where the last
-- committed block ended and runs to the end of the batch. When a transaction in it fails
-- for good, the block rolls back, that transaction is `dead`, and the good ones before it
-- in the block are redone as a block of their own that ends just before it; the next
-- block starts just after it. So every good transaction is applied at most twice (once in
-- a block that failed, once in the block that committed), every dead one once, and a
-- batch without dead transactions is one subtransaction, as before (clear of the
-- 64-subtransaction cache overflow that slows hot-standby replicas); each dead one adds at
-- most two committed subtransactions.
--
-- Unchanged: ledger claims first (a retry overlapping its first attempt is `skipped`), the
-- `opsdb_reject` marker, the batch index in the DETAIL of an error that is not permanent.
--
-- CREATE OR REPLACE resets SECURITY DEFINER and the search_path: both are stated again
-- (see ..._apply_batch_as_owner.sql). EXECUTE privileges are kept by CREATE OR REPLACE.
CREATE OR REPLACE FUNCTION opsdb_apply_batch(batch jsonb, permanent text[])
RETURNS TABLE (idx int, outcome text, sqlstate text, message text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n        int := jsonb_array_length(batch);
    outcomes text[] := array_fill(NULL::text, ARRAY[n]);
    states   text[] := array_fill(NULL::text, ARRAY[n]);
    messages text[] := array_fill(NULL::text, ARRAY[n]);
    first    int := 0;      -- the block's first transaction: all before it are committed
    last     int := n - 1;  -- the block's last transaction
    cur      int;  -- the transaction being applied; survives the rollback of the block
    tx       jsonb;
    step     jsonb;
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
            -- The block committed: the next one starts after it and runs to the end.
            first := last + 1;
            last := n - 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            IF NOT (err_state = ANY (permanent) OR left(err_state, 2) = ANY (permanent)) THEN
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                    DETAIL = concat_ws(E'\n', nullif(err_detail, ''),
                                       'opsdb_apply_batch: batch index ' || cur),
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
