//! [`Handle`]: the registry as the service knows it now, shared by everything that
//! validates or reports. Cheap to clone; reading it never waits (one atomic load).
//!
//! Guarantees:
//! - a registry once known is never replaced by nothing: a failed read keeps the last
//!   good one and records the error beside it;
//! - a registry read from the source is never replaced by an older stored copy;
//! - a failing read is logged when it starts failing and when it recovers, not at every
//!   refresh of a days-long outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::read::{Read, Skipped};
use super::Registry;

/// Where the registry in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = RegistrySource))]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Nothing known yet: neither a stored copy nor a read.
    None,
    /// The last good copy kept in Redis; the read source has not answered since start.
    StoredCopy,
    /// Read from the read source (`read_at`).
    ReadSource,
}

/// What `/health` shows of the registry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// How many tables it has.
    pub tables: usize,
    pub source: Source,
    /// When its content was read from the read source (for a stored copy: when that copy
    /// was read).
    pub read_at: Option<DateTime<Utc>>,
    /// Listed tables left out by the last successful read, and why.
    pub skipped: Vec<Skipped>,
    /// Why the latest read failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// The registry in use, where it came from and how its reading goes.
#[derive(Debug, Clone)]
struct Known {
    registry: Arc<Registry>,
    source: Source,
    skipped: Vec<Skipped>,
    error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    known: ArcSwap<Known>,
    /// Whether the latest read failed (for logging the start and the end of a failure).
    failing: AtomicBool,
    tables: Gauge,
    read_failures: Counter,
}

/// The registry as the service knows it now.
#[derive(Debug, Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

impl Default for Handle {
    fn default() -> Self {
        Self::new()
    }
}

impl Handle {
    /// Nothing known: `current()` is empty and `known()` is `false` until a stored copy is
    /// loaded or the read source is read.
    pub fn new() -> Self {
        Self::with(Registry::default(), Source::None)
    }

    /// A handle that knows `registry` as if just read (tests, fixed setups).
    pub fn from_registry(registry: Registry) -> Self {
        Self::with(registry, Source::ReadSource)
    }

    fn with(registry: Registry, source: Source) -> Self {
        let handle = Self {
            inner: Arc::new(Inner {
                known: ArcSwap::from_pointee(Known {
                    registry: Arc::new(Registry::default()),
                    source: Source::None,
                    skipped: Vec::new(),
                    error: None,
                }),
                failing: AtomicBool::new(false),
                tables: Gauge::default(),
                read_failures: Counter::default(),
            }),
        };
        handle.set(Known {
            registry: Arc::new(registry),
            source,
            skipped: Vec::new(),
            error: None,
        });
        handle
    }

    /// The registry in use (empty if nothing is known).
    pub fn current(&self) -> Arc<Registry> {
        Arc::clone(&self.inner.known.load().registry)
    }

    /// Whether a registry is known (a stored copy or a read), even one with no tables.
    pub fn known(&self) -> bool {
        self.source() != Source::None
    }

    pub fn source(&self) -> Source {
        self.inner.known.load().source
    }

    pub fn status(&self) -> Status {
        let known = self.inner.known.load();
        Status {
            tables: known.registry.tables.len(),
            source: known.source,
            read_at: known.registry.read_at,
            skipped: known.skipped.clone(),
            error: known.error.clone(),
        }
    }

    /// `opsdb_registry_tables`, `opsdb_registry_read_failures_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "opsdb_registry_tables",
            "Tables in the model registry in use",
            self.inner.tables.clone(),
        );
        registry.register(
            "opsdb_registry_read_failures",
            "Reads of the model registry from the read source that failed",
            self.inner.read_failures.clone(),
        );
    }

    fn set(&self, known: Known) {
        let tables = i64::try_from(known.registry.tables.len()).unwrap_or(i64::MAX);
        self.inner.tables.set(tables);
        self.inner.known.store(Arc::new(known));
    }

    /// The stored copy, loaded at start: used unless the read source has answered.
    pub(crate) fn stored_copy(&self, registry: Registry) {
        if self.source() == Source::ReadSource {
            return;
        }
        self.set(Known {
            registry: Arc::new(registry),
            source: Source::StoredCopy,
            skipped: Vec::new(),
            error: self.inner.known.load().error.clone(),
        });
    }

    /// A successful read of the read source.
    pub(crate) fn read(&self, read: Read) {
        if self.inner.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                tables = read.registry.tables.len(),
                "the model registry is read again; it is current"
            );
        }
        self.set(Known {
            registry: Arc::new(read.registry),
            source: Source::ReadSource,
            skipped: read.skipped,
            error: None,
        });
    }

    /// A failed read: the last good registry stays in use.
    pub(crate) fn failed(&self, error: String) {
        self.inner.read_failures.inc();
        let known = self.inner.known.load();
        if !self.inner.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                source = ?known.source,
                "the model registry could not be read; the last good one stays in use until it can"
            );
        }
        let mut next = Known::clone(&known);
        next.error = Some(error);
        self.inner.known.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::read::SkipReason;

    fn registry(tables: &[&str]) -> Registry {
        let mut r = Registry::default();
        for t in tables {
            r.tables.insert(
                (*t).to_owned(),
                crate::registry::TableModel {
                    schema: "public".into(),
                    name: (*t).to_owned(),
                    columns: Vec::new(),
                    key: "id".into(),
                    foreign_keys: Vec::new(),
                },
            );
        }
        r
    }

    fn read(tables: &[&str]) -> Read {
        Read {
            registry: registry(tables),
            skipped: vec![Skipped {
                table: "loose".into(),
                reason: SkipReason::NoPrimaryKey,
            }],
        }
    }

    #[test]
    fn nothing_known_is_empty_and_says_so() {
        let h = Handle::new();
        assert!(!h.known());
        assert!(h.current().tables.is_empty());
        assert_eq!(h.status().source, Source::None);
    }

    #[test]
    fn a_failed_read_keeps_the_last_good_registry_and_says_why() {
        let h = Handle::new();
        h.stored_copy(registry(&["a"]));
        assert_eq!(h.source(), Source::StoredCopy);
        h.failed("down".into());
        assert_eq!(h.current().tables.len(), 1, "the stored copy stays");
        assert_eq!(h.status().error.as_deref(), Some("down"));
        h.read(read(&["a", "b"]));
        let status = h.status();
        assert_eq!((status.tables, status.source), (2, Source::ReadSource));
        assert_eq!(status.error, None);
        assert_eq!(status.skipped.len(), 1);
        h.failed("down again".into());
        assert_eq!(h.current().tables.len(), 2, "the read stays");
        assert_eq!(h.source(), Source::ReadSource);
        assert_eq!(h.inner.read_failures.get(), 2);
    }

    #[test]
    fn a_stored_copy_never_replaces_a_read() {
        let h = Handle::new();
        h.read(read(&["a", "b"]));
        h.stored_copy(registry(&["old"]));
        assert_eq!(h.source(), Source::ReadSource);
        assert!(h.current().table("a").is_some());
        assert_eq!(h.inner.tables.get(), 2);
    }

    #[test]
    fn the_status_names_skipped_tables_with_their_reason_as_text() {
        let h = Handle::new();
        h.read(read(&["a"]));
        let json = serde_json::to_value(h.status()).expect("json");
        assert_eq!(json["source"], "read_source");
        assert_eq!(json["skipped"][0]["table"], "loose");
        assert_eq!(json["skipped"][0]["reason"], "no primary key");
    }
}
