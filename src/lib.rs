//! ops-db-api: the operations-database service of a remote observatory.
//!
//! This package holds what faces the outside: the CLI, configuration, the HTTP and TCP
//! facades and startup. The actors live in the `ops-db-actors` crate (`actors/`).
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_catchup;
pub mod bench_reads;
pub mod config;
pub mod db;
pub mod dev;
pub mod fault_proxy;
pub mod http;
pub mod local_pg;
pub mod local_redis;
pub mod ops;
pub mod reads;
pub mod redis_probe;
pub mod startup;
pub mod tcp;
pub mod telemetry;
pub mod token;
