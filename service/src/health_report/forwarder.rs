//! `forwarder`: the forwarder's state, its counters, the link and the lease.

use std::sync::atomic::Ordering;

use ops_db_actors::forwarder::lease::Role;
use ops_db_actors::forwarder::Link;
use ops_db_actors::health::Failure;
use ops_db_actors::lsn::Lsn;
use ops_db_actors::tree::FORWARDER;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::words::ActorStatus;
use crate::http::AppState;

/// The forwarder, if a primary is configured. Fields a service may not send (an older
/// one) are optional: a client shows what is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForwarderReport {
    pub state: ActorStatus,
    pub restarts: Option<u64>,
    pub last_failure: Option<Failure>,
    /// Batches committed on the primary (this run).
    pub batches: Option<u64>,
    /// Transactions applied by those batches.
    pub applied: Option<u64>,
    /// Transactions found in the primary's ledger already (a replay), not applied again.
    pub skipped: Option<u64>,
    /// Transactions dead-lettered.
    pub dead: Option<u64>,
    pub largest_batch_bytes: Option<u64>,
    /// `forwarder.batch_max_bytes`.
    pub batch_max_bytes: Option<u64>,
    /// The LSN read after the last commit.
    pub last_commit_lsn: Option<String>,
    pub link: Option<Link>,
    /// Set while batches are split after one failed without a culprit (a timeout).
    pub batch_limit: Option<u64>,
    /// Whether this instance holds the site's forwarder lease.
    pub role: Option<Role>,
    /// This process's instance id (the lease's value while it holds it).
    pub instance: Option<String>,
    /// The lease's holder as last read.
    pub lease_holder: Option<String>,
}

impl ForwarderReport {
    /// `None` without a forwarder (or before its first row in the health registry).
    pub fn gather(state: &AppState) -> Option<Self> {
        let tree = &state.tree;
        if !tree.has_forwarder {
            return None;
        }
        let row = tree.health.get(FORWARDER)?;
        let m = &tree.forwarder_metrics;
        let lsn = m.last_lsn.load(Ordering::Relaxed);
        let config = &state.config.forwarder;
        Some(Self {
            state: ActorStatus::of(&row.state),
            restarts: Some(row.restarts),
            last_failure: row.last_failure,
            batches: Some(m.batches.get()),
            applied: Some(m.applied.get()),
            skipped: Some(m.skipped.get()),
            dead: Some(m.dead.get()),
            largest_batch_bytes: Some(m.largest_batch_bytes.load(Ordering::Relaxed)),
            batch_max_bytes: Some(config.batch_max_bytes as u64),
            last_commit_lsn: (lsn > 0).then(|| Lsn(lsn).to_string()),
            link: Some(m.link()),
            batch_limit: match m.batch_limit.load(Ordering::Relaxed) {
                0 => None,
                limit => Some(limit),
            },
            role: Some(m.lease.role(config.lease_ttl)),
            instance: Some(m.lease.instance.clone()),
            lease_holder: m.lease.holder(),
        })
    }
}
