//! The batch function's set mode (one statement per run of like steps) against its row
//! mode (`apply_rows`, one `apply_step` per step): the same batches, clean and dirty, give
//! the same outcomes, the same errors and the same table contents; a clean batch never
//! reaches row mode, a dirty one does.

use ops_db_actors::forwarder::PERMANENT_SQLSTATES;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use crate::site::Site;

/// What one application of a batch left: one (outcome, sqlstate, message) per transaction,
/// or the error it raised (code, message, detail); then the tables and the batch's ledger
/// rows, as text.
#[derive(Debug, PartialEq)]
struct Applied {
    answer: std::result::Result<Vec<Outcome>, [String; 3]>,
    contents: Vec<String>,
}

/// A transaction's outcome, SQLSTATE and message.
type Outcome = (String, Option<String>, Option<String>);

fn permanent() -> Vec<String> {
    PERMANENT_SQLSTATES.iter().map(|s| s.to_string()).collect()
}

/// Applies `batch` through `call` (`apply_batch` or row mode) in a transaction that is
/// rolled back afterwards, and reads what it left before the rollback.
async fn apply_and_read(conn: &mut PgConnection, batch: &Value, rows_only: bool) -> Applied {
    let mut tx = conn.begin().await.expect("begin");
    let sql = if rows_only {
        "SELECT outcome, sqlstate, message FROM opsdb_api.apply_rows($1::jsonb, $2, 0, \
         jsonb_array_length($1::jsonb) - 1) ORDER BY idx"
    } else {
        "SELECT outcome, sqlstate, message FROM opsdb_api.apply_batch($1::jsonb, $2) ORDER BY idx"
    };
    let answer = sqlx::query_as(sql)
        .bind(batch.to_string())
        .bind(permanent())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) => {
                let pg = db.downcast_ref::<sqlx::postgres::PgDatabaseError>();
                [
                    pg.code().to_owned(),
                    pg.message().to_owned(),
                    pg.detail().unwrap_or_default().to_owned(),
                ]
            }
            other => panic!("not a database error: {other}"),
        });
    if answer.is_err() {
        tx.rollback().await.expect("rollback");
        return Applied {
            answer,
            contents: Vec::new(),
        };
    }
    let ids: Vec<Uuid> = batch
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["id"].as_str()?.parse().ok())
        .collect();
    let contents = sqlx::query(
        "SELECT 'eou ' || string_agg(t::text, ' | ' ORDER BY t.id) FROM executed_obs_unit t \
         UNION ALL SELECT 'file ' || string_agg(t::text, ' | ' ORDER BY t.id) FROM raw_data_file t \
         UNION ALL SELECT 'unit ' || string_agg(t.id || ':' || t.name, ' | ' ORDER BY t.id) \
                   FROM obs_unit t \
         UNION ALL SELECT 'ledger ' || string_agg(a.transaction_id || a.site || a.stream_id || a.op, \
                   ' | ' ORDER BY a.transaction_id) \
                   FROM opsdb_api.applied_transaction a WHERE a.transaction_id = ANY ($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .expect("contents")
    .into_iter()
    .map(|r| r.get::<Option<String>, _>(0).unwrap_or_default())
    .collect();
    tx.rollback().await.expect("rollback");
    Applied { answer, contents }
}

/// A small deterministic generator (xorshift64*): the failing seed is in every message.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

fn tx(steps: Vec<Value>) -> Value {
    json!({"id": Uuid::now_v7(), "site": "summit", "op": "mixed", "stream_id": "1-0",
           "steps": steps})
}

fn start(eou: Uuid, obs_unit: u64) -> Value {
    json!({"kind": "insert", "table": "executed_obs_unit", "id": eou,
           "values": {"id": eou, "obs_unit_id": obs_unit, "status": "running",
                      "start_time": "2026-12-05T00:00:00Z"}})
}

fn file(eou: Uuid, name: &str) -> Value {
    let id = Uuid::now_v7();
    json!({"kind": "insert", "table": "raw_data_file", "id": id,
           "values": {"name": name, "relative_path": format!("a/{name}"),
                      "executed_obs_unit_id": eou, "size": 1, "checksum": "c",
                      "checksum_algorithm": "sha256", "created_at": "2026-12-05T00:00:00Z"}})
}

/// State the generator keeps: what exists (committed before the batch, or inserted by an
/// earlier step of it), so that most steps are good.
struct World {
    eous: Vec<Uuid>,
    units: Vec<u64>,
    next_unit: u64,
    applied: Vec<Uuid>,
}

/// One random transaction: mostly good steps; a step is one of the dirty kinds (or a
/// delete of a missing file) about `dirty` percent of the time.
fn random_tx(rng: &mut Rng, w: &mut World, n: usize, dirty: u64) -> Value {
    let mut steps = Vec::new();
    for s in 0..1 + rng.below(3) {
        let name = format!("f{n}_{s}.fits");
        let kind = if rng.chance(dirty) {
            12 + rng.below(4)
        } else {
            rng.below(12)
        };
        steps.push(match kind {
            0..=2 => {
                let eou = Uuid::now_v7();
                w.eous.push(eou);
                start(eou, 1 + rng.below(10))
            }
            3..=6 => file(rng.pick(&w.eous), &name),
            7 => {
                let eou = rng.pick(&w.eous);
                json!({"kind": "update", "table": "executed_obs_unit", "id": eou,
                       "set": {"status": rng.pick(&["completed", "failed"])}})
            }
            8 => {
                let eou = rng.pick(&w.eous);
                json!({"kind": "update", "table": "executed_obs_unit", "id": eou,
                       "set": {"end_time": format!("2026-12-05T0{}:00:00Z", rng.below(10))}})
            }
            9 => {
                w.next_unit += 1;
                w.units.push(w.next_unit);
                // An integer key given as a number or a string, in the values or not.
                match rng.below(3) {
                    0 => json!({"kind": "insert", "table": "obs_unit", "id": w.next_unit,
                                "values": {"name": name}}),
                    1 => json!({"kind": "insert", "table": "obs_unit",
                                "id": w.next_unit.to_string(),
                                "values": {"id": w.next_unit, "name": name}}),
                    _ => json!({"kind": "insert", "table": "obs_unit",
                                "values": {"id": w.next_unit, "name": name}}),
                }
            }
            10 => json!({"kind": "update", "table": "obs_unit", "id": rng.pick(&w.units),
                         "set": {"name": format!("renamed {n}")}}),
            11 => json!({"kind": "delete", "table": "obs_unit", "id": rng.pick(&w.units)}),
            12 => json!({"kind": "delete", "table": "raw_data_file", "id": Uuid::now_v7()}),
            // Dirty: unknown parent (23503), bad value (22P02), missing row (P0002),
            // unknown column (22023).
            13 => file(Uuid::now_v7(), &name),
            14 => {
                let mut f = file(rng.pick(&w.eous), &name);
                f["values"]["size"] = json!("many");
                f
            }
            _ => match rng.below(2) {
                0 => json!({"kind": "update", "table": "executed_obs_unit", "id": Uuid::now_v7(),
                            "set": {"status": "completed"}}),
                _ => json!({"kind": "update", "table": "executed_obs_unit",
                            "id": rng.pick(&w.eous), "set": {"colour": "blue"}}),
            },
        });
    }
    let mut t = tx(steps);
    if rng.chance(5) && !w.applied.is_empty() {
        t["id"] = json!(rng.pick(&w.applied)); // applied before: skipped
    } else if rng.chance(4) {
        t["opsdb_reject"] = json!({"sqlstate": "23503", "message": "rejected by the forwarder"});
        if rng.chance(30) && !w.applied.is_empty() {
            t["id"] = json!(rng.pick(&w.applied)); // rejected but applied before: skipped
        }
    }
    t
}

async fn primary_with_obs_units_writable() -> (std::sync::Arc<crate::pg::TestPg>, PgConnection) {
    let pg = Site::primary_with_replica().await;
    let mut conn = pg_connect(&pg).await;
    // obs_unit (an integer key) allowed too; `ghost` is allowed but does not exist: a step
    // on it is a non-permanent error (42P01), raised with its batch index.
    sqlx::raw_sql(
        "INSERT INTO opsdb_api.writable_table VALUES ('obs_unit', 'public', 'id'), \
         ('ghost', 'public', 'id')",
    )
    .execute(&mut conn)
    .await
    .expect("allowlist");
    (pg, conn)
}

async fn pg_connect(pg: &crate::pg::TestPg) -> PgConnection {
    PgConnection::connect(&pg.primary_url())
        .await
        .expect("connect to the primary")
}

/// Random mixed batches over three tables with UUID and integer keys: inserts, updates
/// (several of one row), deletes, skipped and rejected transactions, dirty steps of every
/// kind, sometimes a non-permanent error. Set mode and row mode answer the same and leave
/// the same rows, ledger included.
#[tokio::test]
async fn set_mode_and_row_mode_agree_on_random_mixed_batches() {
    let (_pg, mut conn) = primary_with_obs_units_writable().await;
    // Committed before the batches: executed obs units, files, obs units, ledger rows.
    let mut world = World {
        eous: (0..5).map(|_| Uuid::now_v7()).collect(),
        units: (1..=10).collect(),
        next_unit: 1000,
        applied: Vec::new(),
    };
    let mut setup: Vec<Value> = world.eous.iter().map(|e| tx(vec![start(*e, 1)])).collect();
    setup.push(tx(vec![file(world.eous[0], "old.fits")]));
    setup.push(tx(vec![
        json!({"kind": "insert", "table": "obs_unit", "id": 500, "values": {"name": "five hundred"}}),
    ]));
    world.units.push(500);
    let answer: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM opsdb_api.apply_batch($1::jsonb, $2) ORDER BY idx")
            .bind(Value::from(setup.clone()).to_string())
            .bind(permanent())
            .fetch_all(&mut conn)
            .await
            .expect("setup");
    assert!(answer.iter().all(|o| o == "applied"), "{answer:?}");
    world.applied = setup
        .iter()
        .map(|t| crate::helpers::uuid(&t["id"]))
        .collect();

    let (mut dirty, mut clean, mut raised) = (0, 0, 0);
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut w = World {
            eous: world.eous.clone(),
            units: world.units.clone(),
            next_unit: world.next_unit,
            applied: world.applied.clone(),
        };
        // Short batches with dirty steps close together (row mode takes their
        // neighbours), and long ones with few (set mode's windows after a failure).
        let (len, dirty_percent) = if seed % 4 == 0 {
            (300 + rng.below(300) as usize, 1)
        } else {
            (1 + rng.below(60) as usize, 25)
        };
        let mut batch: Vec<Value> = (0..len)
            .map(|n| random_tx(&mut rng, &mut w, n, dirty_percent))
            .collect();
        if seed % 8 == 3 {
            let at = rng.below(len as u64) as usize;
            batch[at]["steps"]
                .as_array_mut()
                .expect("steps")
                .push(json!({"kind": "delete", "table": "ghost", "id": 1}));
        }
        let batch = Value::from(batch);
        let set = apply_and_read(&mut conn, &batch, false).await;
        let rows = apply_and_read(&mut conn, &batch, true).await;
        assert_eq!(
            set, rows,
            "seed {seed}: set mode and row mode differ on {batch}"
        );
        match &set.answer {
            Ok(outcomes) if outcomes.iter().any(|o| o.0 == "dead") => dirty += 1,
            Ok(_) => clean += 1,
            Err(e) => {
                assert_eq!(e[0], "42P01", "seed {seed}: {e:?}");
                assert!(e[2].contains("apply_batch: batch index "), "{e:?}");
                raised += 1;
            }
        }
    }
    // The draw covered every case.
    eprintln!("{clean} clean batches, {dirty} with dead transactions, {raised} raised");
    assert!(
        dirty > 0 && clean > 0 && raised > 0,
        "{dirty} {clean} {raised}"
    );
}

/// Calls of the service's functions in the current transaction (`track_functions = 'pl'`).
async fn calls(conn: &mut PgConnection, function: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions \
         WHERE schemaname = 'opsdb_api' AND funcname = $1",
    )
    .bind(function)
    .fetch_one(conn)
    .await
    .expect("function statistics")
}

/// A clean batch of 1,000 steps (500 executed obs units started, then a file of each) never
/// calls `apply_step`: one statement per run. One orphan file among them sends its run to
/// row mode (`apply_rows`, `apply_step` per step); the others are still applied.
#[tokio::test]
async fn a_clean_batch_runs_in_set_mode_and_a_dirty_one_falls_back_to_row_mode() {
    let (_pg, mut conn) = primary_with_obs_units_writable().await;
    // 500 starts, then a file of each: two runs of 500 transactions.
    let batch = |orphan: Option<usize>| {
        let eous: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
        let mut txs: Vec<Value> = eous.iter().map(|e| tx(vec![start(*e, 2)])).collect();
        for (i, eou) in eous.iter().enumerate() {
            let parent = if orphan == Some(i) {
                Uuid::now_v7()
            } else {
                *eou
            };
            txs.push(tx(vec![file(parent, &format!("{i}.fits"))]));
        }
        Value::from(txs)
    };
    for (orphan, row_mode) in [(None, false), (Some(250), true)] {
        let mut tx = conn.begin().await.expect("begin");
        sqlx::raw_sql("SET LOCAL track_functions = 'pl'")
            .execute(&mut *tx)
            .await
            .expect("track_functions");
        // The view shows the session's counts not yet flushed, maybe from before this
        // transaction: what this batch adds is the difference.
        let before = [
            calls(&mut tx, "apply_step").await,
            calls(&mut tx, "apply_rows").await,
            calls(&mut tx, "apply_batch").await,
        ];
        let outcomes: Vec<String> = sqlx::query_scalar(
            "SELECT outcome FROM opsdb_api.apply_batch($1::jsonb, $2) ORDER BY idx",
        )
        .bind(batch(orphan).to_string())
        .bind(permanent())
        .fetch_all(&mut *tx)
        .await
        .expect("apply");
        let dead: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| *o != "applied")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(outcomes.len(), 1000);
        assert_eq!(
            dead,
            orphan.map(|i| 500 + i).into_iter().collect::<Vec<_>>()
        );
        let (steps, rows) = (
            calls(&mut tx, "apply_step").await - before[0],
            calls(&mut tx, "apply_rows").await - before[1],
        );
        assert_eq!(calls(&mut tx, "apply_batch").await - before[2], 1);
        if row_mode {
            // The failed run's good steps, each through apply_step (a call that raises is
            // not counted).
            assert!(
                rows >= 1 && steps >= 499,
                "row mode: {rows} apply_rows, {steps} apply_step"
            );
        } else {
            assert_eq!((rows, steps), (0, 0), "a clean batch stays in set mode");
        }
        let files: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_data_file")
            .fetch_one(&mut *tx)
            .await
            .expect("files");
        assert_eq!(files, if row_mode { 499 } else { 500 });
        tx.rollback().await.expect("rollback");
    }
}
