//! `ops-db-api bench apply`: the batch function on a local primary, no WAN: set mode
//! (`apply_batch`, one statement per run of like steps) against row mode (`apply_rows`, the
//! former algorithm: one `apply_step` per step) on the same batches, alternating in one run.
//!
//! Each measurement applies a freshly drawn batch (new ids) in a transaction that is
//! rolled back afterwards, so every run starts from the same tables; the time is the
//! `SELECT … FROM apply_batch(…)` (or `apply_rows`) statement alone, the batch sent as one
//! bound parameter as the forwarder sends it as one literal.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use ops_db_actors::forwarder::PERMANENT_SQLSTATES;

/// A workload: its name and how to draw one batch of it (transactions).
struct Workload {
    name: &'static str,
    draw: fn(Uuid) -> Vec<Value>,
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "2,000 start-observations (one row each)",
        draw: starts,
    },
    Workload {
        name: "2,000 file registrations (one row each)",
        draw: files,
    },
    Workload {
        name: "10 bulks of 1,000 files",
        draw: bulks,
    },
    Workload {
        name: "2,000 mixed, 1% dirty (unknown parent)",
        draw: dirty_mix,
    },
    Workload {
        name: "1,000 starts each followed by a file (runs of one)",
        draw: pairs,
    },
];

pub async fn run(runs: usize, dir: &Path) -> anyhow::Result<()> {
    let dir = dir.join(format!("apply-{}", std::process::id()));
    let result = measure(runs.max(1), &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(runs: usize, dir: &Path) -> anyhow::Result<()> {
    let (redis, pg) = crate::services::local_services(dir).await?;
    let mut conn = PgConnection::connect(&pg.primary_url()).await?;
    // One executed obs unit that the file registrations refer to, committed.
    let eou = Uuid::now_v7();
    apply(&mut conn, Mode::Set, &[tx(vec![start(eou)])], true).await?;

    println!("ops-db-api bench apply: {runs} runs per mode and workload, alternating");
    println!("| workload | rows | set mode median (ms) | best | rows/s (median) | row mode median (ms) | best | rows/s (median) | set mode speed-up |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for workload in &WORKLOADS {
        // One warm-up of each mode (plans, catalog caches), not counted.
        for mode in [Mode::Set, Mode::Rows] {
            apply(&mut conn, mode, &(workload.draw)(eou), false).await?;
        }
        let (mut set, mut rows) = (Vec::new(), Vec::new());
        let mut steps = 0;
        for _ in 0..runs {
            for mode in [Mode::Set, Mode::Rows] {
                let batch = (workload.draw)(eou);
                steps = batch
                    .iter()
                    .map(|t| t["steps"].as_array().map_or(0, Vec::len))
                    .sum::<usize>();
                let took = apply(&mut conn, mode, &batch, false).await?;
                match mode {
                    Mode::Set => set.push(took),
                    Mode::Rows => rows.push(took),
                }
            }
        }
        let (set_median, set_best) = stats(&mut set);
        let (rows_median, rows_best) = stats(&mut rows);
        let per_s = |d: Duration| steps as f64 / d.as_secs_f64();
        println!(
            "| {} | {steps} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1}× |",
            workload.name,
            ms(set_median),
            ms(set_best),
            per_s(set_median),
            ms(rows_median),
            ms(rows_best),
            per_s(rows_median),
            rows_median.as_secs_f64() / set_median.as_secs_f64(),
        );
    }
    drop(conn);
    pg.stop().await?;
    redis.stop().await;
    Ok(())
}

#[derive(Clone, Copy)]
enum Mode {
    Set,
    Rows,
}

/// Applies `batch` in `mode` and returns how long the statement took; commits only with
/// `commit`, else rolls back. Checks that every transaction has an outcome.
async fn apply(
    conn: &mut PgConnection,
    mode: Mode,
    batch: &[Value],
    commit: bool,
) -> anyhow::Result<Duration> {
    let permanent: Vec<String> = PERMANENT_SQLSTATES.iter().map(|s| s.to_string()).collect();
    let sql = match mode {
        Mode::Set => "SELECT count(*) FROM opsdb_api.apply_batch($1::jsonb, $2)",
        Mode::Rows => {
            "SELECT count(*) FROM opsdb_api.apply_rows($1::jsonb, $2, 0, \
             jsonb_array_length($1::jsonb) - 1)"
        }
    };
    let text = Value::from(batch.to_vec()).to_string();
    let mut tx = conn.begin().await?;
    let start = Instant::now();
    let outcomes: i64 = sqlx::query_scalar(sql)
        .bind(&text)
        .bind(&permanent)
        .fetch_one(&mut *tx)
        .await
        .context("applying a batch")?;
    let took = start.elapsed();
    anyhow::ensure!(
        outcomes as usize == batch.len(),
        "{outcomes} outcomes for {} transactions",
        batch.len()
    );
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(took)
}

/// Median and best of `samples`.
fn stats(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[0])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tx(steps: Vec<Value>) -> Value {
    json!({"id": Uuid::now_v7(), "site": "bench", "op": "bench", "stream_id": "1-0",
           "steps": steps})
}

/// A start-observation as the endpoint writes it.
fn start(eou: Uuid) -> Value {
    json!({"kind": "insert", "table": "executed_obs_unit", "id": eou,
           "values": {"id": eou, "obs_unit_id": 3, "status": "running",
                      "start_time": "2026-12-06T00:00:00Z", "instrument_module": "prime-cam"}})
}

/// A file registration of `eou`.
fn file(eou: Uuid, n: usize) -> Value {
    let id = Uuid::now_v7();
    json!({"kind": "insert", "table": "raw_data_file", "id": id,
           "values": {"id": id, "name": format!("f{n}.fits"),
                      "relative_path": format!("2026/f{n}.fits"), "executed_obs_unit_id": eou,
                      "size": 1, "checksum": "9f86d081884c7d659a2feaa0c55ad015",
                      "checksum_algorithm": "sha256", "created_at": "2026-12-06T00:00:00Z"}})
}

fn starts(_: Uuid) -> Vec<Value> {
    (0..2000).map(|_| tx(vec![start(Uuid::now_v7())])).collect()
}

fn files(eou: Uuid) -> Vec<Value> {
    (0..2000).map(|n| tx(vec![file(eou, n)])).collect()
}

fn bulks(eou: Uuid) -> Vec<Value> {
    (0..10)
        .map(|b| tx((0..1000).map(|n| file(eou, b * 1000 + n)).collect()))
        .collect()
}

/// A start-observation every tenth transaction, file registrations otherwise, and every
/// hundredth a file of an executed obs unit that exists nowhere (23503, dead).
fn dirty_mix(eou: Uuid) -> Vec<Value> {
    (0..2000)
        .map(|n| match n % 100 {
            50 => tx(vec![file(Uuid::now_v7(), n)]),
            _ if n % 10 == 0 => tx(vec![start(Uuid::now_v7())]),
            _ => tx(vec![file(eou, n)]),
        })
        .collect()
}

/// Set mode's worst case without failures: every run one step long (a start-observation,
/// then a file of it, 1,000 times), so one statement per step as in row mode.
fn pairs(_: Uuid) -> Vec<Value> {
    (0..1000)
        .flat_map(|n| {
            let eou = Uuid::now_v7();
            [tx(vec![start(eou)]), tx(vec![file(eou, n)])]
        })
        .collect()
}
