//! Logging: human-readable to stderr, and JSON lines (for log shippers) to daily-rolling
//! files when `log.dir` is set. The level comes from `log.level`; `RUST_LOG`, when set,
//! wins. Colours only when stderr is a terminal.

use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Keeps the file writer flushing; hold it until the process ends.
pub struct Guard(#[allow(dead_code)] Option<WorkerGuard>);

pub fn init(level: &str, dir: Option<&Path>) -> anyhow::Result<Guard> {
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let stderr = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let (file, guard) = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("log.dir {}: {e}", dir.display()))?;
            let appender = tracing_appender::rolling::daily(dir, "ops-db-api.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(filter());
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init()?;
    Ok(Guard(guard))
}
