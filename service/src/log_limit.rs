//! Log rate limits: per kind of message (one call site of `tracing`), at most [`BURST`]
//! events per [`WINDOW`] reach the logs; the rest are counted and left out, and once per
//! window one line per kind says how many were left out (`report_every`). So an outage that
//! makes every write or every retry log a warning cannot fill the log disk, and the first
//! lines of each kind, which say what is wrong, are always there.
//!
//! The limit is a [`Layer`] whose `event_enabled` decides for every layer at once (stderr
//! and the files); it keeps one small entry per call site that ever logged (a fixed set:
//! call sites are static), never per message text. The summary lines come from a task, not
//! from inside the logging path, and their own call site is exempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Events of one call site let through per window.
pub const BURST: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The summary lines' target: exempt from the limit.
const SUMMARY_TARGET: &str = "ops_db_service::log_limit";

#[derive(Clone, Default)]
pub struct RateLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

struct Site {
    metadata: &'static Metadata<'static>,
    started: Instant,
    seen: u32,
    /// Left out since the last summary.
    suppressed: u64,
}

impl RateLimit {
    /// Whether an event of `metadata` goes to the logs now, counting it either way.
    fn admit(&self, metadata: &'static Metadata<'static>, now: Instant) -> bool {
        if metadata.target() == SUMMARY_TARGET {
            return true;
        }
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let site = sites.entry(metadata.callsite()).or_insert(Site {
            metadata,
            started: now,
            seen: 0,
            suppressed: 0,
        });
        if now.duration_since(site.started) >= WINDOW {
            site.started = now;
            site.seen = 0;
        }
        if site.seen < BURST {
            site.seen += 1;
            true
        } else {
            site.suppressed += 1;
            false
        }
    }

    /// The kinds with events left out since the last call, `(file:line, level, count)`,
    /// and their counts reset.
    pub fn take_suppressed(&self) -> Vec<(String, String, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, String, u64)> = sites
            .values_mut()
            .filter(|site| site.suppressed > 0)
            .map(|site| {
                let m = site.metadata;
                let at = format!(
                    "{}:{}",
                    m.file().unwrap_or(m.target()),
                    m.line().unwrap_or(0)
                );
                let n = std::mem::take(&mut site.suppressed);
                (at, m.level().to_string(), n)
            })
            .collect();
        out.sort();
        out
    }

    /// Logs, every [`WINDOW`], one line per kind of message that had events left out.
    pub async fn report_every(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            for (at, level, n) in self.take_suppressed() {
                tracing::warn!(
                    target: SUMMARY_TARGET,
                    at = %at,
                    level = %level,
                    left_out = n,
                    "log rate limit: left out {n} {level} lines from {at} in the last {}s \
                     (at most {BURST} per kind per window)",
                    every.as_secs()
                );
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        self.admit(event.metadata(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Lines written by the fmt layer, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn noisy(n: usize) {
        for i in 0..n {
            tracing::warn!(i, "the same warning again");
        }
    }

    fn quiet(n: usize) {
        for _ in 0..n {
            tracing::error!("another kind");
        }
    }

    #[test]
    fn each_kind_gets_its_burst_and_the_rest_is_counted() {
        let lines = Lines::default();
        let writer = lines.clone();
        let limit = RateLimit::default();
        let subscriber = tracing_subscriber::registry().with(limit.clone()).with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            noisy(100);
            quiet(5);
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("the same warning again").count(),
            BURST as usize
        );
        assert_eq!(text.matches("another kind").count(), 5);
        let left_out = limit.take_suppressed();
        assert_eq!(left_out.len(), 1, "{left_out:?}");
        assert_eq!((left_out[0].1.as_str(), left_out[0].2), ("WARN", 80));
        assert!(left_out[0].0.contains("log_limit.rs:"), "{left_out:?}");
        assert!(limit.take_suppressed().is_empty(), "counts reset");
    }

    #[test]
    fn a_new_window_lets_a_kind_through_again() {
        let limit = RateLimit::default();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(limit.clone())
            .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || noisy(1));
        let metadata = {
            let sites = limit.sites.lock().unwrap();
            sites.values().next().unwrap().metadata
        };
        let start = Instant::now();
        let admitted = (0..50).filter(|_| limit.admit(metadata, start)).count();
        assert_eq!(admitted, BURST as usize - 1, "one was logged above");
        let later = start + WINDOW;
        assert!(limit.admit(metadata, later), "a new window");
    }
}
