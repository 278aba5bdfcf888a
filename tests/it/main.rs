//! The integration tests: one binary, the real application on real Redis; a real
//! PostgreSQL primary and streaming replica for what needs them (`pg`).
//!
//! Services come from Docker (testcontainers, images built by `scripts/build-images.sh`)
//! by default, or from this machine's binaries with `OPSDB_TEST_BACKEND=local`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod helpers;
mod pg;

mod backlog;
mod bad_input;
mod batch_function;
mod big_batches;
mod dashboard;
mod disk;
mod events;
mod fairness;
mod faults;
mod forward;
mod freshness;
mod heal;
mod health;
mod hostile;
mod http_bounds;
mod idempotency;
mod ingest;
mod lease;
mod liveness;
mod memory;
mod metrics;
mod openapi;
mod paging;
mod pg_smoke;
mod poison;
mod precise;
mod reads;
mod reconnect;
mod redis_access;
mod redis_conf;
mod registry;
mod release;
mod restore;
mod retry;
mod roles;
mod schema;
mod set_apply;
mod shutdown;
mod site;
mod staging;
mod status;
mod stored;
mod stored_tokens;
mod tcp;
mod tls;
mod tokens;
mod transactions;
mod undo;
mod ws_bounds;
