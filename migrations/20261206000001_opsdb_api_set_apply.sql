-- Set-based apply (issue 19, item 3). The batch function applied each step with one
-- `EXECUTE` of `apply_step`, planned per step: on a local primary 2,000 one-row
-- transactions took about 127 ms, and the primary's apply bounded the catch-up. It now
-- applies a batch with one statement per run of like steps (set mode), and falls back to
-- the former algorithm (row mode, `apply_rows`) only for the transactions of a run that
-- failed. Same signature and result: the forwarder needs no change. `migrate` replaces
-- `opsdb_api` by `schema.name`.
--
-- CREATE OR REPLACE resets SECURITY DEFINER and the search_path: both are stated again
-- below (tests/it/roles.rs checks them after every migration). It keeps the function's
-- privileges: opsdb_forwarder keeps EXECUTE on apply_batch (packaging/postgres/roles.sql).

-- Row mode: the batch function's algorithm before set mode, unchanged in behaviour, for
-- the transactions `lo` .. `hi` (0-based, inclusive) of `batch`. It returns one row per
-- transaction of that range: applied, skipped (already in the ledger) or dead (rejected
-- for good, with the SQLSTATE and message); any error whose SQLSTATE or class is not in
-- `permanent` is raised again with `apply_batch: batch index N` (N counted in the whole
-- batch) as the last line of its DETAIL, code, message, detail and hint kept.
--
-- A transaction given with an `opsdb_reject` member ({"sqlstate": …, "message": …}) is not
-- applied: it is `dead` with that error, unless it is already in the ledger (`skipped`).
-- Each transaction claims its ledger row before its steps: a retry that overlaps its first
-- attempt waits on the row lock, then finds it `skipped`.
--
-- Its cost stays linear in the range's size whatever fails. The range runs in blocks,
-- each one subtransaction. A block starts where the last committed block ended and runs to
-- the end of the range. When a transaction in it fails for good, the block rolls back, that
-- transaction is `dead`, and the good ones before it in the block are redone as a block of
-- their own that ends just before it; the next block starts just after it. So every good
-- transaction is applied at most twice, every dead one once, and a range without dead
-- transactions is one subtransaction; each dead one adds at most two committed
-- subtransactions. Each step is one `apply_step`; the allowlist and the catalog are read
-- once per table per call (`tables` survives the rollback of a block).
--
-- Not SECURITY DEFINER: only apply_batch calls it, as the owner. PUBLIC's EXECUTE is
-- revoked below; nobody else is granted it.
CREATE FUNCTION opsdb_api.apply_rows(batch jsonb, permanent text[], lo int, hi int)
RETURNS TABLE (idx int, outcome text, sqlstate text, message text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n        int := jsonb_array_length(batch);
    outcomes text[] := array_fill(NULL::text, ARRAY[n]);
    states   text[] := array_fill(NULL::text, ARRAY[n]);
    messages text[] := array_fill(NULL::text, ARRAY[n]);
    tables   jsonb := '{}';  -- writable_entry by table name, for this call
    first    int := lo;      -- the block's first transaction: all before it are committed
    last     int := hi;      -- the block's last transaction
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
    WHILE first <= hi LOOP
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
            last := hi;
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
                last := hi;
            ELSE
                last := cur - 1;
            END IF;
        END;
    END LOOP;
    RETURN QUERY SELECT i - 1, outcomes[i], states[i], messages[i]
                   FROM generate_series(lo + 1, hi + 1) AS i;
END
$$;

-- Applies `batch` (a JSON array of {id, site, op, stream_id, steps}) in order and returns
-- one row per transaction: applied, skipped (already in the ledger) or dead (rejected for
-- good, with the SQLSTATE and message). `permanent`, `opsdb_reject`, the ledger claim and
-- the errors raised (`apply_batch: batch index N` in the DETAIL) are as described for row
-- mode (`apply_rows` above), which gives every outcome and error of a transaction that
-- set mode cannot apply.
--
-- Set mode. A pass over a window of the batch (at first all of it):
--   1. the steps of the window's transactions (`opsdb_reject` ones aside) are checked
--      set-wise: allowlisted table (writable_entry, once per table per batch), kind, id
--      type, values or set a non-empty object of live columns, an insert's key equal to its
--      id, an update that does not set the key column. The first transaction with a step
--      that fails a check goes to row mode, which gives its precise error; so does the whole
--      window if two transactions in it have the same id (a retry racing its own batch;
--      rare);
--   2. the ledger claim of all other transactions is one INSERT … ON CONFLICT DO NOTHING
--      RETURNING; the unclaimed ones are `skipped`, the `opsdb_reject` ones `skipped` if in
--      the ledger, else `dead` with the given error;
--   3. the steps of the claimed transactions, in order (transaction, then step), are cut
--      into runs (window functions over `jsonb_array_elements … WITH ORDINALITY`): maximal
--      sequences of consecutive steps with the same table, kind and column set; an update
--      or delete run also ends before a step whose id came earlier in the same sequence
--      (conservative: `A B A B` makes three runs, not two), so that no statement touches a
--      row twice;
--   4. each run is ONE statement over `jsonb_populate_recordset(NULL::rel, $1)` (values
--      typed by the table's row type, as in row mode): INSERT … SELECT, UPDATE … FROM,
--      DELETE … USING. An update or delete that touches fewer rows than the run has steps
--      fails the run (row mode raises P0002 for the right transaction).
-- A pass is one BEGIN … EXCEPTION block, so a batch that applies cleanly is ONE
-- subtransaction, as before (more than 64 open in a transaction overflow the
-- subtransaction cache and slow hot-standby replicas); there is no block per run.
--
-- When the pass fails, its block rolls it back. `run_lo` .. `run_hi` (variables: they
-- survive the rollback) name the transactions of the run being applied (of the whole
-- window while none is, of the transaction that failed a check in step 1). The
-- transactions before that run are redone in set mode (a pass whose window ends just before
-- the run), the run's transactions in row mode (which dead-letters the culprits, or raises
-- a non-permanent error with its batch index), then set mode continues after the run.
-- Errors not in `permanent` go to row mode too (a trigger's RAISE, a missing table): row
-- mode raises them with the batch index of the transaction they come from, which the
-- forwarder counts against it. Except those about the moment, not the data: a
-- serialization failure or deadlock (class 40), resources (53), a lock not available
-- (55: `lock_timeout`), operator intervention (57), system (58) and internal (XX) errors
-- are raised at once, with the batch index of the run's first transaction (the forwarder
-- blames no transaction for these classes: `forwarder::isolate`), so that a lock held by
-- someone else is waited for once, not again in row mode past the statement timeout. A
-- cancel (statement timeout) is not caught at all, as before.
--
-- Failures close together make set mode a loss (a pass, a redo and a row-mode call per
-- bad transaction): when a pass fails fewer than 32 transactions after its start, row
-- mode also takes the transactions before the run (instead of a redo pass) and `dense`
-- transactions after it; `dense` starts at 32 and doubles while the failures stay that
-- close, and is reset by a failure further away. A batch that alternates good and bad
-- transactions thus makes O(log n) set passes, not n.
--
-- Cost, linear whatever fails. Every good transaction is applied once in the committed
-- result; its rows are inserted at most three times counting rolled-back attempts (once by
-- the failed pass, then at most twice in row mode, or once more by the redo pass before a
-- failed run), a dead transaction's at most twice (the failed pass, row mode). A pass that
-- fails wastes at most its window's checks and claims, so after a failure the window
-- restarts at max(64, twice the transactions that failure settled) and doubles after
-- each pass that commits: the wasted claims add up to a few times the batch, not the
-- square of it. A failed run of m transactions costs row mode for those m: one bad
-- transaction among many alike (a file registration with an unknown parent among 2,000)
-- sends its whole run to row mode, which is then the former cost plus the failed pass.
--
-- Semantic differences with row mode, which set mode cannot avoid:
--   - constraints and triggers that run at the end of a statement (foreign keys, AFTER
--     triggers, statement triggers) run once per run instead of once per step: a foreign
--     key to a row that a later step of the same run inserts (a table that refers to
--     itself) passes in set mode where row mode would reject the earlier step; the batch
--     commits both rows, so the result is consistent;
--   - BEFORE row triggers see the rows of a run in order, but an AFTER row trigger of an
--     earlier step fires after the later steps of its run.
--
-- `jit = off`: the planner cannot know how many rows a jsonb array holds (it assumes 100
-- per jsonb_array_elements and per unnest), so the queries over a batch look costly
-- enough for JIT compilation, which took seconds for a 2,000-transaction batch that
-- runs in milliseconds without it. The setting holds for this call only.
--
-- SECURITY DEFINER: the forwarder's role has no table privilege at all, only EXECUTE on
-- this function (packaging/postgres/roles.sql); it writes as its owner, the role that ran
-- `migrate`.
CREATE OR REPLACE FUNCTION opsdb_api.apply_batch(batch jsonb, permanent text[])
RETURNS TABLE (idx int, outcome text, sqlstate text, message text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    n       int := jsonb_array_length(batch);
    pos     int := 0;      -- every transaction before it is settled
    stop    int := n - 1;  -- the pass's window is pos .. stop
    win     int := n;      -- the window's length after the next settled range
    row_lo  int;           -- a range due in row mode once pos reaches row_lo
    row_hi  int;
    run_lo  int;           -- what a failure of the pass sends to row mode; survives the
    run_hi  int;           -- rollback of the pass
    bad     int;
    dense   int := 0;      -- transactions after a failed run that row mode takes too
    tables  jsonb := '{}'; -- writable_entry by table name, for this batch
    claimed int[];
    r       record;
    err_state  text;
    err_msg    text;
    err_detail text;
    err_hint   text;
    rel     text;
    keycol  text;
    list    text;
    done    bigint;
    -- Settled outcomes in batch order, and the pass's own (appended once it committed).
    res_i int[] := '{}';
    res_o text[] := '{}';
    res_s text[] := '{}';
    res_m text[] := '{}';
    p_i   int[];
    p_o   text[];
    p_s   text[];
    p_m   text[];
BEGIN
    WHILE pos < n LOOP
        IF pos = row_lo THEN
            SELECT res_i || array_agg(x.idx ORDER BY x.idx),
                   res_o || array_agg(x.outcome ORDER BY x.idx),
                   res_s || array_agg(x.sqlstate ORDER BY x.idx),
                   res_m || array_agg(x.message ORDER BY x.idx)
              INTO res_i, res_o, res_s, res_m
              FROM opsdb_api.apply_rows(batch, permanent, row_lo, row_hi) AS x;
            pos := row_hi + 1;
            row_lo := NULL;
            stop := least(n - 1, pos - 1 + win);
            CONTINUE;
        END IF;
        BEGIN
            run_lo := pos;
            run_hi := stop;
            -- 1. The tables the window names, then its steps checked.
            SELECT tables || coalesce(jsonb_object_agg(w.table_name,
                                                       opsdb_api.writable_entry(w.table_name)), '{}')
              INTO tables
              FROM opsdb_api.writable_table w
             WHERE NOT tables ? w.table_name
               AND w.table_name IN (
                   SELECT s.step ->> 'table'
                     FROM generate_series(pos, stop) AS i,
                          jsonb_array_elements(batch -> i -> 'steps') AS s(step)
                    WHERE NOT (batch -> i) ? 'opsdb_reject');
            SELECT min(v.i) INTO bad
              FROM (SELECT i, tables -> (s.step ->> 'table') AS e, s.step ->> 'kind' AS kind,
                           s.step -> 'id' AS id,
                           s.step -> CASE s.step ->> 'kind' WHEN 'insert' THEN 'values'
                                                            ELSE 'set' END AS vals
                      FROM generate_series(pos, stop) AS i,
                           jsonb_array_elements(batch -> i -> 'steps') AS s(step)
                     WHERE NOT (batch -> i) ? 'opsdb_reject') AS v
             WHERE NOT coalesce(
                   v.e IS NOT NULL
                   AND v.kind IN ('insert', 'update', 'delete')
                   AND ((v.kind = 'insert' AND v.id IS NULL)
                        OR jsonb_typeof(v.id) IN ('string', 'number'))
                   AND (v.kind = 'delete'
                        OR (jsonb_typeof(v.vals) = 'object' AND v.vals <> '{}'
                            AND NOT EXISTS (SELECT 1 FROM jsonb_object_keys(v.vals) AS k
                                             WHERE NOT (v.e -> 'columns') ? k)
                            AND CASE v.kind
                                WHEN 'update' THEN NOT v.vals ? (v.e ->> 'key')
                                ELSE v.id IS NULL OR NOT v.vals ? (v.e ->> 'key')
                                     OR v.vals ->> (v.e ->> 'key') = v.id #>> '{}' END)),
                   false);
            IF bad IS NOT NULL THEN
                run_lo := bad;
                run_hi := bad;
                RAISE EXCEPTION 'apply_batch: transaction % goes to row mode', bad;
            END IF;
            IF EXISTS (SELECT FROM generate_series(pos, stop) AS i
                        GROUP BY (batch -> i ->> 'id')::uuid HAVING count(*) > 1) THEN
                RAISE EXCEPTION 'apply_batch: a transaction id repeats in % .. %', pos, stop;
            END IF;
            -- 2. The ledger claim, and the window's outcomes if the pass commits. The
            -- rejected ones' ledger lookup does not see this statement's claims.
            WITH w AS (SELECT i, batch -> i AS t FROM generate_series(pos, stop) AS i),
            c AS (
                INSERT INTO opsdb_api.applied_transaction (transaction_id, site, stream_id, op)
                SELECT (w.t ->> 'id')::uuid, w.t ->> 'site', w.t ->> 'stream_id', w.t ->> 'op'
                  FROM w WHERE NOT w.t ? 'opsdb_reject' ORDER BY w.i
                ON CONFLICT (transaction_id) DO NOTHING
                RETURNING transaction_id)
            SELECT array_agg(w.i ORDER BY w.i),
                   array_agg(CASE WHEN x.dead THEN 'dead'
                                  WHEN c.transaction_id IS NULL THEN 'skipped'
                                  ELSE 'applied' END ORDER BY w.i),
                   array_agg(CASE WHEN x.dead THEN w.t -> 'opsdb_reject' ->> 'sqlstate' END
                             ORDER BY w.i),
                   array_agg(CASE WHEN x.dead THEN w.t -> 'opsdb_reject' ->> 'message' END
                             ORDER BY w.i),
                   coalesce(array_agg(w.i ORDER BY w.i)
                            FILTER (WHERE c.transaction_id IS NOT NULL), '{}')
              INTO p_i, p_o, p_s, p_m, claimed
              FROM w
              LEFT JOIN c ON c.transaction_id = (w.t ->> 'id')::uuid
             CROSS JOIN LATERAL (
                   SELECT w.t ? 'opsdb_reject'
                          AND NOT EXISTS (SELECT 1 FROM opsdb_api.applied_transaction a
                                           WHERE a.transaction_id = (w.t ->> 'id')::uuid)
                          AS dead) AS x;
            -- 3. and 4. The claimed transactions' steps cut into runs, one statement each.
            FOR r IN
                WITH st AS (
                    SELECT c.i, s.ord, s.step ->> 'table' AS tbl, s.step ->> 'kind' AS kind,
                           s.step -> 'id' AS id, tables -> (s.step ->> 'table') ->> 'key' AS key,
                           s.step
                      FROM unnest(claimed) AS c(i)
                     CROSS JOIN LATERAL jsonb_array_elements(batch -> c.i -> 'steps')
                           WITH ORDINALITY AS s(step, ord)),
                d AS MATERIALIZED (  -- computes each step's column set once
                    SELECT st.i, st.ord, st.tbl, st.kind, st.id #>> '{}' AS id_text, x.data,
                           ARRAY(SELECT jsonb_object_keys(x.data)) AS cols
                      FROM st CROSS JOIN LATERAL (
                          SELECT CASE
                              WHEN st.kind = 'delete' THEN jsonb_build_object(st.key, st.id)
                              WHEN st.kind = 'update'
                                  THEN (st.step -> 'set') || jsonb_build_object(st.key, st.id)
                              WHEN st.id IS NULL OR st.step -> 'values' ? st.key
                                  THEN st.step -> 'values'
                              ELSE (st.step -> 'values') || jsonb_build_object(st.key, st.id)
                              END AS data) AS x),
                -- The window functions see narrow rows (no data): sorting the data with
                -- them would spill to disk for a batch of a few thousand steps.
                b AS (
                    SELECT d.i, d.ord, d.tbl, d.kind, d.cols, d.id_text,
                           row_number() OVER o AS seq,
                           (d.tbl, d.kind, d.cols) IS DISTINCT FROM
                           (lag(d.tbl) OVER o, lag(d.kind) OVER o, lag(d.cols) OVER o) AS fresh
                      FROM d WINDOW o AS (ORDER BY d.i, d.ord)),
                g AS (
                    SELECT b.i, b.ord, b.tbl, b.kind, b.cols, b.id_text, b.seq, b.fresh,
                           count(*) FILTER (WHERE b.fresh) OVER (ORDER BY b.seq) AS segment
                      FROM b),
                h AS (
                    SELECT g.i, g.ord, g.tbl, g.kind, g.cols, g.seq,
                           g.fresh OR (g.kind <> 'insert' AND
                               lag(g.seq) OVER (PARTITION BY g.segment, g.id_text COLLATE "C"
                                                ORDER BY g.seq)
                               IS NOT NULL) AS starts
                      FROM g),
                k AS (
                    SELECT h.i, h.ord, h.tbl, h.kind, h.cols, h.seq,
                           count(*) FILTER (WHERE h.starts) OVER (ORDER BY h.seq) AS run
                      FROM h)
                -- A run has one table, kind and column set: min() takes them.
                SELECT min(k.tbl) AS tbl, min(k.kind) AS kind, min(k.cols) AS cols,
                       min(k.i) AS lo, max(k.i) AS hi, count(*) AS cnt,
                       jsonb_agg(d.data ORDER BY k.seq) AS data
                  FROM k JOIN d ON d.i = k.i AND d.ord = k.ord
                 GROUP BY k.run ORDER BY k.run
            LOOP
                run_lo := r.lo;
                run_hi := r.hi;
                rel := tables -> r.tbl ->> 'rel';
                keycol := tables -> r.tbl ->> 'key';
                IF r.kind = 'insert' THEN
                    SELECT string_agg(format('%I', c), ', ') INTO list FROM unnest(r.cols) AS c;
                    EXECUTE format('INSERT INTO %s (%s) SELECT %s '
                                   'FROM jsonb_populate_recordset(NULL::%s, $1)',
                                   rel, list, list, rel)
                        USING r.data;
                ELSE
                    IF r.kind = 'update' THEN
                        SELECT string_agg(format('%I = s.%I', c, c), ', ') INTO list
                          FROM unnest(r.cols) AS c WHERE c <> keycol;
                        EXECUTE format('UPDATE %s AS t SET %s '
                                       'FROM jsonb_populate_recordset(NULL::%s, $1) AS s '
                                       'WHERE t.%I = s.%I', rel, list, rel, keycol, keycol)
                            USING r.data;
                    ELSE
                        EXECUTE format('DELETE FROM %s AS t '
                                       'USING jsonb_populate_recordset(NULL::%s, $1) AS s '
                                       'WHERE t.%I = s.%I', rel, rel, keycol, keycol)
                            USING r.data;
                    END IF;
                    GET DIAGNOSTICS done = ROW_COUNT;
                    IF done <> r.cnt THEN
                        RAISE EXCEPTION 'apply_batch: % of % rows of % found', done, r.cnt, rel;
                    END IF;
                END IF;
            END LOOP;
            -- The pass committed (nothing below can fail).
            res_i := res_i || p_i;
            res_o := res_o || p_o;
            res_s := res_s || p_s;
            res_m := res_m || p_m;
            pos := stop + 1;
            IF row_lo IS NULL THEN
                win := least(n, 2 * win);
                stop := least(n - 1, pos - 1 + win);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
            IF left(err_state, 2) IN ('40', '53', '55', '57', '58', 'XX') THEN
                RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                    DETAIL = concat_ws(E'\n', nullif(err_detail, ''),
                                       'apply_batch: batch index ' || run_lo),
                    HINT = coalesce(err_hint, '');
            END IF;
            -- Before the run: set mode again; the run: row mode; after it, a new window.
            -- Failures close together (fewer than 32 transactions before the run): row
            -- mode takes the transactions before the run too, and `dense` more after it,
            -- doubling while the failures stay close.
            row_lo := run_lo;
            row_hi := run_hi;
            IF run_lo - pos < 32 THEN
                dense := least(n, greatest(32, 2 * dense));
                row_lo := pos;
                row_hi := least(n - 1, greatest(run_hi, run_lo + dense - 1));
            ELSE
                dense := 0;
                stop := run_lo - 1;
            END IF;
            win := greatest(64, 2 * (row_hi + 1 - pos));
        END;
    END LOOP;
    RETURN QUERY SELECT u.i, u.o, u.s, u.m FROM unnest(res_i, res_o, res_s, res_m) AS u(i, o, s, m)
                  ORDER BY u.i;
END
$$;

REVOKE EXECUTE ON FUNCTION opsdb_api.apply_rows(jsonb, text[], int, int) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION opsdb_api.apply_batch(jsonb, text[]) FROM PUBLIC;
