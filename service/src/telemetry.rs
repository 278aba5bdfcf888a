//! Logging: human-readable to stderr, and JSON lines (for log shippers) to daily-rolling
//! files when `log.dir` is set, of which the newest `log.keep_files` are kept. The level
//! comes from `log.level`; `RUST_LOG`, when set, wins. Colours only when stderr is a
//! terminal. Each kind of message (call site) is rate-limited (`log_limit`): at most 20 a
//! minute, and a line a minute says how many were left out.

use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// The log files' names: `ops-db-api.log.YYYY-MM-DD` (UTC days).
pub const FILE_PREFIX: &str = "ops-db-api.log";

/// Keeps the file writer flushing; hold it until the process ends.
pub struct Guard(#[allow(dead_code)] Option<WorkerGuard>);

/// Logs to stderr and, with `dir`, to daily files in it, of which the newest `keep_files`
/// are kept.
pub fn init(level: &str, dir: Option<&Path>, keep_files: usize) -> anyhow::Result<Guard> {
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
            let (writer, guard) = tracing_appender::non_blocking(file_appender(dir, keep_files)?);
            let layer = fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(filter());
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let limit = crate::log_limit::RateLimit::default();
    tracing_subscriber::registry()
        .with(limit.clone())
        .with(stderr)
        .with(file)
        .try_init()?;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(limit.report_every(crate::log_limit::WINDOW));
    }
    Ok(Guard(guard))
}

/// The daily files in `dir` (made if missing). At most `keep_files` of them stay, today's
/// included: when the appender opens (every start) and at every daily roll, tracing-appender
/// deletes the oldest files whose names start with [`FILE_PREFIX`] beyond that. "Oldest" is
/// by the file's creation time where the filesystem records one, else by the date in its
/// name. `keep_files` is validated to be at least 1 (tracing-appender reads 0 as "keep all").
pub fn file_appender(dir: &Path, keep_files: usize) -> anyhow::Result<RollingFileAppender> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("log.dir {}: {e}", dir.display()))?;
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(FILE_PREFIX)
        .max_log_files(keep_files)
        .build(dir)
        .map_err(|e| anyhow::anyhow!("log.dir {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn only_the_newest_keep_files_daily_files_remain() {
        let dir = TempDir(
            std::env::temp_dir().join(format!("opsdb-logs-{:016x}", rand::random::<u64>())),
        );
        std::fs::create_dir_all(&dir.0).unwrap();
        // Twenty days of files, made in date order as the days would have made them. The
        // pause gives each a later creation time than the one before (the kernel's file
        // clock advances in ticks of up to 10 ms), which is what the pruning sorts by.
        let old: Vec<String> = (1..=20)
            .map(|day| format!("{FILE_PREFIX}.2020-01-{day:02}"))
            .collect();
        let mut created: Vec<Option<SystemTime>> = Vec::new();
        for name in &old {
            std::fs::write(dir.0.join(name), "{}\n").unwrap();
            created.push(std::fs::metadata(dir.0.join(name)).unwrap().created().ok());
            std::thread::sleep(Duration::from_millis(15));
        }
        if created.iter().all(Option::is_some) {
            assert!(
                created.windows(2).all(|w| w[0] < w[1]),
                "the test's premise: each file created after the one before: {created:?}"
            );
        }
        // Not the appender's: left alone whatever their age.
        for other in ["redis.log", "notes.2020-01-01"] {
            std::fs::write(dir.0.join(other), "x\n").unwrap();
        }

        let appender = file_appender(&dir.0, 5).expect("appender");
        drop(appender);

        let left = names(&dir.0);
        let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(FILE_PREFIX)).collect();
        assert_eq!(ours.len(), 5, "keep_files = 5, today's included: {left:?}");
        let kept_old: Vec<&String> = ours.iter().copied().filter(|n| old.contains(n)).collect();
        assert_eq!(kept_old, old[16..].iter().collect::<Vec<_>>(), "{left:?}");
        let today = ours
            .iter()
            .find(|n| !old.contains(n))
            .expect("today's file");
        let date = today.trim_start_matches(&format!("{FILE_PREFIX}."));
        assert!(
            chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
            "{today}"
        );
        for other in ["redis.log", "notes.2020-01-01"] {
            assert!(left.contains(other), "{other} is not a log file of ours");
        }
    }
}
