//! `ops-db-api bench`: the benchmarks whose figures `docs/BENCHMARKS.md` records.
//!
//! Each starts its own servers under `--dir` and the real application in this process.
//! The load generators run on the same cores as the service: figures are for comparing
//! runs on one machine, not absolute.

mod apply;
mod bytes;
mod catchup;
mod events;
mod ingest;
mod outage;
mod reads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use uuid::Uuid;

use crate::fault_proxy::FaultProxy;
use crate::local_pg::{LocalPostgres, PgUrl};
use ops_db_service::config::{Config, Scope, Token};
use ops_db_service::token;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The batch function on a local primary: set mode against row mode, alternating.
    Apply {
        /// Runs per mode and workload (median and best reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// HTTP ingest at several client concurrencies.
    Ingest {
        /// Concurrent clients, one measurement each.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        clients: Vec<usize>,
        /// Measured time per concurrency (after a 1 s warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Where the benchmark's Redis keeps its AOF.
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// Visibility detection, merged-read latency and memory as the buffer grows.
    Reads {
        /// Buffer sizes to measure reads at (cumulative).
        #[arg(long, value_delimiter = ',', default_value = "0,10000,1000000")]
        buffered: Vec<usize>,
        /// Reads per measurement (visibility samples: at most 500).
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// The replica tracker's poll interval at rest (`replica.poll_interval`); while
        /// transactions wait it polls every `replica.fast_poll_interval` (5 ms, the default).
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        poll: Duration,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// What events cost ingest, and their fan-out delay to websocket clients.
    Events {
        /// Websocket clients in the last phase, each receiving every event.
        #[arg(long, default_value_t = 1000)]
        ws_clients: usize,
        /// Interleaved rounds of events off and on (no client) before the clients' phase.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Concurrent HTTP writers in every phase.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Measured time per phase (after a 1 s warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// An outage end to end: the link cut while transactions (bulk ones among them) are
    /// written, the replica down for part of it, both back; drain, replication, memory and
    /// ingest latency before, during and after.
    Outage(outage::Options),
    /// What each write costs in Redis: AOF bytes and `used_memory` per buffered write, per
    /// file of a bulk, what a replicated transaction leaves, a breakdown by key and by
    /// command, and with `--soak` Redis' size at a constant write rate.
    Bytes(bytes::Options),
    /// Catch-up: transactions buffered during an outage, forwarded through an emulated WAN.
    Catchup {
        #[arg(long, default_value_t = 100_000)]
        transactions: usize,
        /// Round-trip times of the emulated link, one measurement each.
        #[arg(long, value_delimiter = ',', default_value = "250ms,0ms", value_parser = humantime::parse_duration)]
        rtt: Vec<Duration>,
        /// `forwarder.batch_size` (the default's value).
        #[arg(long, default_value_t = 8000)]
        batch_size: usize,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// Every benchmark `docs/BENCHMARKS.md` records, one after another, with the commands
    /// listed in `ALL`. Each measures what it is compared against in the same run (the
    /// durable LPUSH, per-row commits over the same link, the quiet phase, events off).
    All {
        /// Where every benchmark keeps its servers' data.
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
}

/// What `bench all` runs, in order, and the limit or baseline each measures beside its
/// figures in the same run.
pub const ALL: &[(&[&str], &str)] = &[
    (
        &["ingest"],
        "durable LPUSH on the same Redis (redis-benchmark)",
    ),
    (
        &["catchup", "--transactions", "100000", "--rtt", "250ms,0ms"],
        "one committed INSERT per row over the same link",
    ),
    (&["outage"], "the probe writer's latency before the cut"),
    (
        &["outage", "--rate", "1000"],
        "the probe writer's latency before the cut, the load paced",
    ),
    (
        &["reads", "--buffered", "0,10000,1000000", "--samples", "500"],
        "reads with nothing buffered",
    ),
    (&["events"], "the same writes with events off, interleaved"),
    (
        &[
            "bytes",
            "--replicated",
            "5000",
            "--soak",
            "10m",
            "--rate",
            "200",
        ],
        "the issue's byte targets per write (an LPUSH costs about 50 AOF bytes)",
    ),
    (
        &["apply", "--runs", "11"],
        "the batch function's row mode on the same batches, interleaved",
    ),
];

/// One line of [`ALL`], parsed as `ops-db-api bench …` would parse it.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct One {
    #[command(subcommand)]
    command: BenchCommand,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::All { dir } => all(&dir).await,
        BenchCommand::Apply { runs, dir } => apply::run(runs, &dir).await,
        BenchCommand::Ingest {
            clients,
            duration,
            dir,
        } => ingest::run(&clients, duration, &dir).await,
        BenchCommand::Catchup {
            transactions,
            rtt,
            batch_size,
            dir,
        } => catchup::run(transactions, &rtt, batch_size, &dir).await,
        BenchCommand::Events {
            ws_clients,
            rounds,
            writers,
            duration,
            dir,
        } => events::run(ws_clients, rounds, writers, duration, &dir).await,
        BenchCommand::Outage(options) => outage::run(options).await,
        BenchCommand::Bytes(options) => bytes::run(options).await,
        BenchCommand::Reads {
            buffered,
            samples,
            poll,
            dir,
        } => reads::run(&buffered, samples, poll, &dir).await,
    }
}

/// Runs every line of [`ALL`] with `--dir dir`; stops at the first that fails.
async fn all(dir: &std::path::Path) -> anyhow::Result<()> {
    let dir = dir.to_str().context("--dir is not UTF-8")?;
    for (args, limit) in ALL {
        let line = args.join(" ");
        println!("\n## ops-db-api bench {line} --dir {dir}\n\n(compared with: {limit})\n");
        let one = One::try_parse_from(args.iter().copied().chain(["--dir", dir]))
            .with_context(|| format!("bench all: `{line}`"))?;
        Box::pin(run(one.command))
            .await
            .with_context(|| format!("bench {line}"))?;
    }
    Ok(())
}

/// The machine's 1, 5 and 15 minute load averages: how busy the shared cores were.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The service's configuration in a benchmark: site `site`, HTTP and TCP on free ports
/// (every client is 127.0.0.1: its per-peer caps are the whole caps), the Redis at
/// `redis_url`, one write token (`secret`), room for 100,000,000 buffered transactions;
/// then `settings` (the forwarder, the replica, ...), then the checks loading applies.
pub(crate) fn service_config(
    site: &str,
    redis_url: &str,
    secret: &str,
    settings: impl FnOnce(&mut Config),
) -> anyhow::Result<Config> {
    let mut config = Config::defaults(site);
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.http.max_connections_per_peer = 512;
    config.tcp.listen = ([127, 0, 0, 1], 0).into();
    config.tcp.max_connections_per_peer = 256;
    config.redis.url = redis_url.to_owned();
    config.buffer.max_buffered = 100_000_000;
    config.auth.tokens = vec![Token {
        name: "bench".to_owned(),
        sha256: token::hash(secret),
        scopes: vec![Scope::Write, Scope::Read],
    }];
    settings(&mut config);
    config.validate()?;
    Ok(config)
}

/// The primary's URL with the port of the fault proxy in front of it: the emulated WAN.
pub(crate) fn through(pg: &LocalPostgres, wan: &FaultProxy) -> String {
    PgUrl {
        port: wan.addr().port(),
        ..pg.primary_parts()
    }
    .to_string()
}

/// Starts an executed obs unit (of obs unit 1); its id and its transaction's.
pub(crate) async fn start_obs_unit(base: &str, secret: &str) -> anyhow::Result<(Uuid, Uuid)> {
    start_unit(&reqwest::Client::new(), base, secret, 1).await
}

/// Starts an executed obs unit of `obs_unit` through `http`; its id and its transaction's.
pub(crate) async fn start_unit(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
    obs_unit: i64,
) -> anyhow::Result<(Uuid, Uuid)> {
    let started: serde_json::Value = http
        .post(format!("{base}/executed_obs_units/start"))
        .bearer_auth(secret)
        .json(&json!({ "obs_unit_id": obs_unit }))
        .send()
        .await?
        .json()
        .await?;
    let id = |field: &str| -> anyhow::Result<Uuid> {
        started[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("start answered no {field}: {started}"))
    };
    Ok((id("id")?, id("transaction_id")?))
}

/// The body of one file registration of the executed obs unit `eou`, with a checksum and
/// a size of its own as a real file has: files that all shared one checksum would show
/// the stored bodies a compression no real bulk gets.
pub(crate) fn file_body(eou: &str, name: &str) -> serde_json::Value {
    let checksum: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let size = rand::random_range(1..=4_000_000_000_u64);
    json!({"name": name, "relative_path": format!("2026/{name}"), "executed_obs_unit_id": eou,
           "size": size, "checksum": checksum})
}

/// The `q` quantile of a histogram of microseconds, in milliseconds.
pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// This process's resident memory (`VmRSS`) in MB.
pub(crate) fn rss_mb() -> f64 {
    proc_status_mb("VmRSS")
}

/// A memory field of `/proc/self/status` (`VmRSS`, `VmHWM`, ...) in MB; 0 if unreadable.
pub(crate) fn proc_status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The numeric fields of Redis' `INFO` sections (`memory`: `used_memory`,
/// `used_memory_peak`, ...; `stats`: `total_forks`, ...).
pub(crate) async fn redis_info(
    conn: &mut redis::aio::MultiplexedConnection,
    sections: &[&str],
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let info: String = redis::cmd("INFO").arg(sections).query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_bench_all_parses() {
        for (args, _) in ALL {
            let parsed = One::try_parse_from(args.iter().copied().chain(["--dir", "x"]));
            assert!(parsed.is_ok(), "{args:?}: {:?}", parsed.err());
        }
    }
}
