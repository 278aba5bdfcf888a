//! `ops-db-api bench ingest`: HTTP ingest throughput and latency against a durable Redis
//! (`appendfsync always`) started for the run, with `redis-benchmark` LPUSH figures from
//! the same Redis in the same run as the physical limit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use ops_db_service::config::Config;
use ops_db_service::startup::Application;
use ops_db_service::token;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::local_pg::PgUrl;
use crate::local_redis::LocalRedis;
use crate::ports::free_port;

pub(crate) struct Outcome {
    pub(crate) clients: usize,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency_us: Histogram<u64>,
}

pub async fn run(clients: &[usize], duration: Duration, dir: &Path) -> anyhow::Result<()> {
    let dir = dir.join(format!("redis-{}", std::process::id()));
    let redis = LocalRedis::start(&dir, free_port()?).await?;
    let secret = token::generate();
    println!(
        "ops-db-api bench ingest: POST /raw_data_files/, Redis appendonly yes, appendfsync always"
    );
    println!("| forwarder | clients | acknowledged writes/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    // The same load twice in one run: without a forwarder, and with one crash-looping
    // against a primary that refuses connections (restarting every few milliseconds). A
    // secondary that forwards needs a read source: it refuses connections too, so the
    // replica tracker backs off alongside (with its default policy).
    let refused = PgUrl::opsdb(free_port()?).to_string();
    let crash_looping = |c: &mut Config| {
        c.forwarder.primary_url = Some(refused.clone());
        c.forwarder.restart.backoff_base = Duration::from_millis(1);
        c.forwarder.restart.backoff_cap = Duration::from_millis(20);
        c.replica.url = Some(refused.clone());
    };
    let phases = [
        (
            "none",
            super::service_config("bench", &redis.url(), &secret, |_| {})?,
        ),
        (
            "crash-looping",
            super::service_config("bench", &redis.url(), &secret, crash_looping)?,
        ),
    ];
    for (phase, config) in phases {
        phase_rows(phase, config, &secret, clients, duration).await?;
    }
    lpush_rows(redis.port, &redis.passwords.admin, clients).await;
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One phase: the service with `config`, loaded at each concurrency; one row each.
async fn phase_rows(
    phase: &str,
    config: Config,
    secret: &str,
    clients: &[usize],
    duration: Duration,
) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let tree = app.tree();
    let url = format!("http://{}/raw_data_files/", app.http_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    for &c in clients {
        let _warm = load(&url, secret, c, Duration::from_secs(1)).await?;
        let o = load(&url, secret, c, duration).await?;
        let ms = |q: f64| o.latency_us.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {phase} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            o.clients,
            o.ok as f64 / o.elapsed.as_secs_f64(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            o.latency_us.max() as f64 / 1000.0,
            o.errors
        );
    }
    if let Some(row) = tree.health.get(ops_db_actors::tree::FORWARDER) {
        println!("(forwarder restarts during the phase: {})", row.restarts);
    }
    stop.cancel();
    server.await.context("server task")?
}

/// `redis-benchmark` LPUSH on the same Redis: the physical limit of one durable write.
async fn lpush_rows(port: u16, password: &str, clients: &[usize]) {
    println!();
    println!("redis-benchmark LPUSH on the same Redis (the physical limit of one durable write):");
    println!("| clients | LPUSH/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|");
    for &c in clients {
        match redis_benchmark(port, password, c).await {
            Ok((rps, p50, p99)) => println!("| {c} | {rps} | {p50} | {p99} |"),
            Err(err) => println!("| {c} | redis-benchmark failed: {err:#} | | |"),
        }
    }
}

/// `clients` tasks, each sending one write after another for `duration`.
pub(crate) async fn load(
    url: &str,
    secret: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let body: Arc<str> = json!({
        "name": "scan_0001.fits",
        "relative_path": "2026/11/24/prime-cam/scan_0001.fits",
        "executed_obs_unit_id": "0192f7a4-3c1e-7b2a-9f00-000000000001",
        "size": 1_048_576,
        "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "file_type": "fits",
    })
    .to_string()
    .into();
    let started = Instant::now();
    let deadline = started + duration;
    let auth: Arc<str> = format!("Bearer {secret}").into();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = Client {
                http: http.clone(),
                url: url.to_owned(),
                body: Arc::clone(&body),
                auth: Arc::clone(&auth),
            };
            tokio::spawn(client.run_until(deadline))
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for task in tasks {
        let (h, o, e) = task.await??;
        latency_us.add(h)?;
        ok += o;
        errors += e;
    }
    Ok(Outcome {
        clients,
        ok,
        errors,
        elapsed: started.elapsed(),
        latency_us,
    })
}

/// One load-generating client: one write after another.
struct Client {
    http: reqwest::Client,
    url: String,
    body: Arc<str>,
    auth: Arc<str>,
}

impl Client {
    /// Writes until `deadline`; the latencies of acknowledged writes, and the counts.
    async fn run_until(self, deadline: Instant) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let (mut ok, mut errors) = (0u64, 0u64);
        while Instant::now() < deadline {
            let t = Instant::now();
            let sent = self
                .http
                .post(&self.url)
                .header("authorization", &*self.auth)
                .header("content-type", "application/json")
                .body(self.body.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                    let _ = r.bytes().await;
                    ok += 1;
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                }
                _ => errors += 1,
            }
        }
        Ok((hist, ok, errors))
    }
}

/// Runs `redis-benchmark -t lpush --csv` as the administrator (the dev kit's Redis answers
/// no one without a password); returns (requests/s, p50 ms, p99 ms).
async fn redis_benchmark(
    port: u16,
    password: &str,
    clients: usize,
) -> anyhow::Result<(String, String, String)> {
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "lpush",
            "-n",
            "100000",
            "--user",
            "default",
            "-a",
            password,
        ])
        .args(["-c", &clients.to_string(), "--csv"])
        .output()
        .await
        .context("redis-benchmark not found: apt-get install redis-tools")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .find(|l| l.starts_with("\"LPUSH"))
        .context("no LPUSH row in redis-benchmark output")?;
    let cells: Vec<&str> = row.split(',').map(|c| c.trim_matches('"')).collect();
    let cell = |i: usize| cells.get(i).map(|s| (*s).to_owned()).unwrap_or_default();
    Ok((cell(1), cell(4), cell(6)))
}
