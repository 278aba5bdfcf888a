//! The dev kit: what exists only for `ops-db-api dev`, the benchmarks and the tests. Local
//! Redis and PostgreSQL servers from this machine's binaries, the userspace fault proxy
//! that emulates the WAN, free loopback ports, the summit in a box and the benchmarks.
//!
//! The service (`ops-db-service`) does not depend on this crate; the `ops-db-api` binary
//! includes it behind its default feature `dev`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod dev;
pub mod fault_proxy;
pub mod local_pg;
pub mod local_redis;
pub mod ports;
pub mod redis_conf;
pub mod services;
pub mod set_check;
pub mod slow_log;
pub mod standin;
pub mod wan;
