//! The actors of ops-db-api and the domain they need.
//!
//! This crate knows nothing of HTTP, TOML or websockets: the root package parses requests
//! and configuration and talks to a running [`tree::Tree`].
#![forbid(unsafe_code)]

pub mod backoff;
pub mod body;
pub mod buffer;
pub mod dlq;
pub mod domain;
pub mod events;
pub mod forwarder;
pub mod health;
pub mod history;
pub mod ingest;
pub mod lsn;
pub mod notifier;
pub mod overlay;
pub mod pg;
pub mod redis_conn;
pub mod references;
pub mod registry;
pub mod replica;
pub mod resend;
pub mod slot;
pub mod supervisor;
pub mod tree;

/// The config of this crate's property tests: 256 cases (pure functions of microseconds
/// each), and no regression file written into the source tree (a failure prints its
/// minimal input).
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: 256,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
