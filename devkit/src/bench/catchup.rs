//! `ops-db-api bench catchup`: after an outage, how fast the buffer drains to the primary
//! through an emulated WAN, against the naive per-row commit over the same link.
//!
//! For each RTT: a fresh Redis, primary and replica; the service runs throughout, its
//! forwarder behind a fault proxy with RTT/2 delay each way. The link is cut; the service
//! buffers `transactions` file registrations (one transaction each, after the executed obs
//! unit they reference) while the forwarder crash-loops; the cut lasts until the
//! forwarder's backoff has reached its cap (a long outage). Then the link heals, and the
//! drain is timed from the heal: how long until the first batch lands, until the stream is
//! empty, then how long the replica takes to replay the last commit.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::fault_proxy::FaultProxy;
use ops_db_service::config::Config;
use ops_db_service::startup::Application;
use ops_db_service::token;

pub async fn run(
    transactions: usize,
    rtts: &[Duration],
    batch_size: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    println!(
        "ops-db-api bench catchup: {transactions} buffered transactions, batch_size {batch_size}"
    );
    println!("| RTT | first batch after the heal (s) | drained after the heal (s) | transactions/s from the heal | batches | round trips per batch | replica replayed the last commit after (s) | per-row commits/s over the same link | 100k per-row would take |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &rtt in rtts {
        let base = dir.join(format!(
            "catchup-{}-{}",
            std::process::id(),
            rtt.as_millis()
        ));
        let result = one(transactions, rtt, batch_size, &base).await;
        let _ = std::fs::remove_dir_all(&base);
        result?;
    }
    Ok(())
}

fn config(
    redis: &str,
    secret: &str,
    primary: &str,
    replica: &str,
    batch_size: usize,
) -> anyhow::Result<Config> {
    super::service_config("bench", redis, secret, |c| {
        c.forwarder.primary_url = Some(primary.to_owned());
        c.forwarder.batch_size = batch_size;
        c.forwarder.linger = Duration::ZERO;
        c.replica.url = Some(replica.to_owned());
    })
}

/// Forwarder restarts after which its backoff is drawn from the whole range up to the
/// default 30 s cap (250 ms × 2^7 > 30 s).
const RESTARTS_AT_CAP: u64 = 8;

async fn one(
    transactions: usize,
    rtt: Duration,
    batch_size: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let (redis, pg) = crate::services::local_services(dir).await?;
    let secret = token::generate();
    let primary: SocketAddr = ([127, 0, 0, 1], pg.primary_port()).into();
    let wan = FaultProxy::start(([127, 0, 0, 1], 0).into(), primary).await?;
    wan.set_delay(rtt / 2);
    let url = super::through(&pg, &wan);
    let config = config(&redis.url(), &secret, &url, &pg.replica_url(), batch_size)?;
    let app = Application::build(config).await?;
    let tree = app.tree();
    let base = format!("http://{}", app.http_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let mut backlog = Backlog::open(&redis.admin_url()).await?;

    // 1. The link works: the executed obs unit reaches the primary.
    let eou = super::start_obs_unit(&base, &secret).await?.0.to_string();
    backlog.drained(Instant::now()).await?;

    // 2. The outage: writes are buffered while the forwarder crash-loops into its cap.
    wan.cut();
    fill(&base, &secret, &eou, transactions - 1).await?;
    let outage = Instant::now();
    while tree.health.get("forwarder").map_or(0, |r| r.restarts) < RESTARTS_AT_CAP {
        anyhow::ensure!(
            outage.elapsed() < Duration::from_secs(300),
            "the forwarder never backed off to its cap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. The link heals: the clock starts now.
    let healed = Instant::now();
    wan.heal();
    let first = backlog
        .first_batch(healed, (transactions - 1) as u64)
        .await?;
    let drained = backlog.drained(healed).await?;
    let m = &tree.forwarder_metrics;
    let (batches, trips) = (m.batches.get(), m.round_trips.get());
    let last = ops_db_actors::lsn::Lsn(m.last_lsn.load(Ordering::Relaxed)).to_string();
    let replayed = replica_replayed(&pg.replica_url(), &last).await?;
    stop.cancel();
    server.await??;

    // 4. The naive baseline over the same link: one autocommit INSERT per row.
    let per_row = per_row_commits(&url, &eou, Duration::from_secs(5)).await?;
    println!(
        "| {} ms | {:.2} | {:.1} | {:.0} | {batches} | {:.2} | {:.3} | {:.1} | {} |",
        rtt.as_millis(),
        first.as_secs_f64(),
        drained.as_secs_f64(),
        (transactions - 1) as f64 / drained.as_secs_f64(),
        trips as f64 / batches.max(1) as f64,
        replayed.as_secs_f64(),
        per_row,
        humantime::format_duration(Duration::from_secs((100_000.0 / per_row) as u64)),
    );
    wan.stop().await;
    pg.stop().await?;
    redis.stop().await;
    Ok(())
}

/// The site's stream, watched from outside the service.
struct Backlog {
    conn: redis::aio::MultiplexedConnection,
    stream: String,
}

impl Backlog {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: client.get_multiplexed_async_connection().await?,
            stream: ops_db_actors::overlay::Keys::new("bench").stream(),
        })
    }

    async fn left(&mut self) -> anyhow::Result<u64> {
        Ok(redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(&mut self.conn)
            .await?)
    }

    /// How long after `since` the backlog first shrank below `full`.
    async fn first_batch(&mut self, since: Instant, full: u64) -> anyhow::Result<Duration> {
        self.wait(since, |left| left < full).await
    }

    /// How long after `since` the stream was empty.
    async fn drained(&mut self, since: Instant) -> anyhow::Result<Duration> {
        self.wait(since, |left| left == 0).await
    }

    async fn wait(
        &mut self,
        since: Instant,
        done: impl Fn(u64) -> bool,
    ) -> anyhow::Result<Duration> {
        loop {
            let left = self.left().await?;
            if done(left) {
                return Ok(since.elapsed());
            }
            anyhow::ensure!(
                since.elapsed() < Duration::from_secs(600),
                "not there after 10 minutes ({left} left)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long the replica takes to replay `lsn`, from now.
async fn replica_replayed(url: &str, lsn: &str) -> anyhow::Result<Duration> {
    let mut replica = PgConnection::connect(url).await?;
    let t1 = Instant::now();
    loop {
        let caught_up: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(lsn)
            .fetch_one(&mut replica)
            .await?;
        if caught_up {
            return Ok(t1.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Buffers `n` file registrations with 64 concurrent clients.
pub(crate) async fn fill(base: &str, secret: &str, eou: &str, n: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, next, url, secret, eou) = (
            http.clone(),
            next.clone(),
            format!("{base}/raw_data_files/"),
            secret.to_owned(),
            eou.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let body = super::file_body(&eou, "f.fits");
                let r = http
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    r.status() == reqwest::StatusCode::CREATED,
                    "buffering failed: {}",
                    r.status()
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Rows per second when each row is its own committed statement over `url`.
async fn per_row_commits(url: &str, eou: &str, duration: Duration) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(url).await?;
    let eou: uuid::Uuid = eou.parse()?;
    let t0 = Instant::now();
    let mut rows = 0u64;
    while t0.elapsed() < duration {
        sqlx::query(
            "INSERT INTO raw_data_file (id, name, relative_path, executed_obs_unit_id, size, checksum, checksum_algorithm, created_at) \
             VALUES ($1, 'naive.fits', 'naive.fits', $2, 1, 'x', 'sha256', now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(eou)
        .execute(&mut conn)
        .await?;
        rows += 1;
    }
    Ok(rows as f64 / t0.elapsed().as_secs_f64())
}
