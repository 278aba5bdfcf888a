//! `ops-db-api bench`: the benchmarks whose figures `docs/BENCHMARKS.md` records.
//!
//! Each starts its own servers under `--dir` and the real application in this process.
//! The load generators run on the same cores as the service: figures are for comparing
//! runs on one machine, not absolute.

mod catchup;
mod events;
mod ingest;
mod reads;

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
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
        /// The replica tracker's poll interval.
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
        /// Concurrent HTTP writers in every phase.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Measured time per phase (after a 1 s warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
    /// Catch-up: transactions buffered during an outage, forwarded through an emulated WAN.
    Catchup {
        #[arg(long, default_value_t = 100_000)]
        transactions: usize,
        /// Round-trip times of the emulated link, one measurement each.
        #[arg(long, value_delimiter = ',', default_value = "250ms,0ms", value_parser = humantime::parse_duration)]
        rtt: Vec<Duration>,
        #[arg(long, default_value_t = 2000)]
        batch_size: usize,
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
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
            writers,
            duration,
            dir,
        } => events::run(ws_clients, writers, duration, &dir).await,
        BenchCommand::Reads {
            buffered,
            samples,
            poll,
            dir,
        } => reads::run(&buffered, samples, poll, &dir).await,
    }
}
