//! `replica`: the replica tracker's state and the replica's lag.

use std::sync::atomic::Ordering;

use ops_db_actors::health::Failure;
use ops_db_actors::lsn::Lsn;
use ops_db_actors::replica::FreshnessView;
use ops_db_actors::tree::REPLICA;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::words::ActorStatus;
use crate::http::AppState;

/// The replica tracker, if there is a read source. Fields a service may not send (an
/// older one) are optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaReport {
    pub state: ActorStatus,
    pub restarts: Option<u64>,
    pub last_failure: Option<Failure>,
    /// The replica's replay position at the last poll.
    pub replay_lsn: Option<String>,
    /// WAL bytes between the newest forwarded commit and the replay position.
    pub lag_bytes: Option<u64>,
    /// Age of the oldest forwarded transaction not yet seen replicated.
    pub lag_seconds: Option<f64>,
    /// Transactions marked replicated (this run).
    pub marked_replicated: Option<u64>,
    /// Whether the replica follows the primary while nobody writes (`replica.freshness`).
    #[serde(default, deserialize_with = "super::lenient")]
    pub freshness: Option<FreshnessView>,
}

impl ReplicaReport {
    /// `None` without a read source (or before the tracker's first row).
    pub fn gather(state: &AppState) -> Option<Self> {
        let tree = &state.tree;
        if !tree.has_replica {
            return None;
        }
        let row = tree.health.get(REPLICA)?;
        let m = &tree.replica_metrics;
        let replay = m.replay_lsn.load(Ordering::Relaxed);
        Some(Self {
            state: ActorStatus::of(&row.state),
            restarts: Some(row.restarts),
            last_failure: row.last_failure,
            replay_lsn: (replay > 0).then(|| Lsn(replay).to_string()),
            lag_bytes: Some(m.lag_bytes.get()),
            lag_seconds: Some(m.lag_seconds.get()),
            marked_replicated: Some(m.marked.get()),
            freshness: m.freshness.view(),
        })
    }
}
