//! `ops-db-api bench reads`: how soon a replayed transaction is seen `replicated`, how
//! merged reads behave as the buffer grows, and the service's memory with a large buffer.
//!
//! Visibility: the service forwards to a local primary whose local replica is polled every
//! `poll` at rest, every `replica.fast_poll_interval` while transactions wait to be seen
//! replicated; an observer polls the replica every millisecond for the transaction's commit LSN
//! and the lifecycle every millisecond for `replicated`: the delay between the two. The
//! tracker's polls per second at rest, before and after, are its load on the replica.
//! Reads: the service (no forwarder, so everything stays buffered) reads an executed obs unit
//! with two files from the overlay, at each buffer size; RSS is this process's (the service
//! and the load generator together).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use ops_db_actors::overlay::{Keys, TxState};
use ops_db_actors::tree::Tree;
use ops_db_service::config::Config;
use ops_db_service::startup::Application;
use ops_db_service::token;

use super::{ms, rss_mb};

use crate::local_pg::LocalPostgres;
use crate::local_redis::LocalRedis;

pub async fn run(
    buffered: &[usize],
    samples: usize,
    poll: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    let base = dir.join(format!("reads-{}", std::process::id()));
    let result = measure(buffered, samples, poll, &base).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// The service's config for one part of the benchmark.
struct Setup<'a> {
    redis: &'a LocalRedis,
    pg: &'a LocalPostgres,
    secret: String,
    poll: Duration,
}

impl Setup<'_> {
    fn config(&self, site: &str, forwarder: bool) -> anyhow::Result<Config> {
        super::service_config(site, &self.redis.url(), &self.secret, |c| {
            if forwarder {
                c.forwarder.primary_url = Some(self.pg.primary_url());
                c.forwarder.linger = Duration::ZERO;
            }
            c.replica.url = Some(self.pg.replica_url());
            c.replica.poll_interval = self.poll;
        })
    }

    /// Starts the service; its base URL, what stops it and its actor tree.
    async fn serve(
        &self,
        site: &str,
        forwarder: bool,
    ) -> anyhow::Result<(String, CancellationToken, Server, Arc<Tree>)> {
        let app = Application::build(self.config(site, forwarder)?).await?;
        let base = format!("http://{}", app.http_addr());
        let tree = app.tree();
        let stop = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone()));
        Ok((base, stop, server, tree))
    }
}

type Server = tokio::task::JoinHandle<anyhow::Result<()>>;

async fn measure(
    buffered: &[usize],
    samples: usize,
    poll: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    let (redis, pg) = crate::services::local_services(dir).await?;
    let setup = Setup {
        redis: &redis,
        pg: &pg,
        secret: token::generate(),
        poll,
    };
    println!("ops-db-api bench reads");
    visibility(&setup, samples).await?;
    merged_reads(&setup, buffered, samples).await?;
    pg.stop().await?;
    redis.stop().await;
    Ok(())
}

/// The replica tracker's polls per second over `over`, from its counter.
async fn polls_per_second(tree: &Tree, over: Duration) -> f64 {
    let polls = || {
        tree.replica_metrics
            .polls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (before, at) = (polls(), Instant::now());
    tokio::time::sleep(over).await;
    (polls() - before) as f64 / at.elapsed().as_secs_f64()
}

/// Part 1, visibility detection: replica replayed the commit -> lifecycle `replicated`;
/// and the tracker's polls at rest (its load on the replica) before and after.
async fn visibility(setup: &Setup<'_>, samples: usize) -> anyhow::Result<()> {
    let (base, stop, server, tree) = setup.serve("visibility", true).await?;
    // Settle first: the heartbeat and the startup's own writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest_before = polls_per_second(&tree, Duration::from_secs(5)).await;
    let http = reqwest::Client::new();
    let mut replica = PgConnection::connect(&setup.pg.replica_url()).await?;
    let client = redis::Client::open(setup.redis.admin_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys = Keys::new("visibility");
    let poll = setup.poll;
    let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..samples.min(500) {
        // Start each sample at a random phase of the poll, or every sample lands at the
        // same distance from the next tick.
        let phase = rand::random::<u64>() % (poll.as_millis() as u64).max(1);
        tokio::time::sleep(Duration::from_millis(phase)).await;
        let tx = write_and_wait_forwarded(&http, &base, &setup.secret).await?;
        let lsn: Option<String> = redis::cmd("HGET")
            .arg(keys.lifecycle(tx))
            .arg("commit_lsn")
            .query_async(&mut conn)
            .await?;
        let Some(lsn) = lsn else { continue }; // already replicated before we looked: no sample
        wait_replayed(&mut replica, &lsn).await?;
        let replayed_at = Instant::now();
        wait_marked_replicated(&mut conn, &keys, tx).await?;
        delays.saturating_record(replayed_at.elapsed().as_micros() as u64);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest_after = polls_per_second(&tree, Duration::from_secs(5)).await;
    stop.cancel();
    server.await??;
    println!();
    println!("Visibility detection (replica replayed the commit -> lifecycle `replicated`), poll interval {} at rest, fast_poll_interval while transactions wait (the config's):", humantime::format_duration(poll));
    println!("| samples | p50 ms | p99 ms | max ms | target p99 | tracker polls/s at rest, before / after |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} | {:.1} | {:.1} | 25 ms | {rest_before:.1} / {rest_after:.1} |",
        delays.len(),
        ms(&delays, 0.5),
        ms(&delays, 0.99),
        delays.max() as f64 / 1000.0,
    );
    Ok(())
}

/// One write, acknowledged once forwarded; its transaction id.
async fn write_and_wait_forwarded(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
) -> anyhow::Result<uuid::Uuid> {
    let r: serde_json::Value = http
        .post(format!(
            "{base}/executed_obs_units/start?wait=forwarded&timeout=10s"
        ))
        .bearer_auth(secret)
        .json(&json!({"obs_unit_id": 1}))
        .send()
        .await?
        .json()
        .await?;
    Ok(r["transaction_id"]
        .as_str()
        .context("no transaction id")?
        .parse()?)
}

/// Polls the replica every millisecond until it has replayed `lsn`.
async fn wait_replayed(replica: &mut PgConnection, lsn: &str) -> anyhow::Result<()> {
    loop {
        let replayed: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(lsn)
            .fetch_one(&mut *replica)
            .await?;
        if replayed {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls the lifecycle every millisecond until the service marked it `replicated`.
async fn wait_marked_replicated(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    tx: uuid::Uuid,
) -> anyhow::Result<()> {
    loop {
        let state: Option<TxState> = redis::cmd("HGET")
            .arg(keys.lifecycle(tx))
            .arg("state")
            .query_async(conn)
            .await?;
        if state == Some(TxState::Replicated) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// 2. Merged reads and memory as the buffer grows (no forwarder: everything stays).
async fn merged_reads(setup: &Setup<'_>, buffered: &[usize], samples: usize) -> anyhow::Result<()> {
    let (base, stop, server, _) = setup.serve("reads", false).await?;
    let http = reqwest::Client::new();
    let secret = &setup.secret;
    let (eou, file_id) = seed_unit_with_two_files(&http, &base, secret).await?;
    println!();
    println!("Merged reads from the overlay ({samples} sequential GETs each) and process RSS, by buffer size:");
    println!("| buffered | GET /executed_obs_units/{{id}} p50 ms | p99 ms | GET /raw_data_files/{{id}} p50 ms | p99 ms | RSS MB |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let filler = uuid::Uuid::now_v7().to_string();
    let mut have = 3usize;
    for &n in buffered {
        if n > have {
            crate::bench::catchup::fill(&base, secret, &filler, n - have).await?;
            have = n;
        }
        let detail_url = format!("{base}/executed_obs_units/{eou}");
        let detail = read_latency(&http, &detail_url, secret, samples).await?;
        let file_url = format!("{base}/raw_data_files/{file_id}");
        let file = read_latency(&http, &file_url, secret, samples).await?;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |",
            n.max(3),
            ms(&detail, 0.5),
            ms(&detail, 0.99),
            ms(&file, 0.5),
            ms(&file, 0.99),
            rss_mb()
        );
    }
    stop.cancel();
    server.await??;
    Ok(())
}

/// An executed obs unit with two files; the unit's id and the second file's.
async fn seed_unit_with_two_files(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
) -> anyhow::Result<(String, String)> {
    let eou = super::start_unit(http, base, secret, 2)
        .await?
        .0
        .to_string();
    let mut file_id = String::new();
    for _ in 0..2 {
        let f: serde_json::Value = http
            .post(format!("{base}/raw_data_files/"))
            .bearer_auth(secret)
            .json(&super::file_body(&eou, "a.fits"))
            .send()
            .await?
            .json()
            .await?;
        file_id = f["id"].as_str().context("no id")?.to_owned();
    }
    Ok((eou, file_id))
}

async fn read_latency(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    samples: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..samples {
        let t = Instant::now();
        let r = http.get(url).bearer_auth(secret).send().await?;
        anyhow::ensure!(r.status().is_success(), "read failed: {}", r.status());
        let _ = r.bytes().await?;
        h.saturating_record(t.elapsed().as_micros() as u64);
    }
    Ok(h)
}
