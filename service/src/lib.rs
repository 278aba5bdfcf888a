//! The ops-db-api service: what faces the outside. Configuration, telemetry, the HTTP and
//! TCP facades and startup. The actors live in `ops-db-actors` (`actors/`); what exists
//! only for `dev`, the benchmarks and the tests lives in `ops-db-devkit` (`devkit/`), which
//! this crate does not depend on.
#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod descriptors;
pub mod health_report;
#[cfg(any(test, feature = "proptest"))]
pub mod hostile;
pub mod http;
pub mod log_limit;
pub mod operations;
pub mod ops;
pub mod peers;
pub mod redis_access;
pub mod redis_probe;
pub mod shutdown;
pub mod single_flight;
pub mod startup;
pub mod submit;
pub mod tcp;
pub mod telemetry;
pub mod token;
pub mod token_store;
pub mod token_table;
