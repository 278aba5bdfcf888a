//! The smaller sections: the buffer, events, the model registry, the supervision tree.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use ops_db_actors::buffer::memory::MemoryView;
use ops_db_actors::health::ActorHealth;
use ops_db_actors::registry::Source as RegistrySource;
use ops_db_actors::tree::Tree;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::AppState;
use crate::redis_probe::RedisStatus;

/// The original's `transaction_buffer` (`size`, `failed`) and ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionBuffer {
    /// Transactions buffered and not yet forwarded; `null` when Redis did not answer.
    pub size: Option<u64>,
    /// Dead letters; `null` when Redis did not answer.
    pub failed: Option<u64>,
    /// `buffer.max_buffered`.
    pub limit: Option<u64>,
    /// Age of the oldest transaction not yet forwarded (0 when none is).
    pub oldest_unforwarded_secs: Option<f64>,
    /// Age of the oldest large write being staged in chunks (0 when none is). A staging
    /// takes milliseconds; one over 30 s was left behind (by a stopped service, or a
    /// commit that failed part-way) and the buffer's sweep undoes it within 10 s more.
    pub oldest_staging_secs: Option<f64>,
    /// Redis' memory against the buffer's share of its `maxmemory`.
    pub memory: Option<MemoryView>,
}

impl TransactionBuffer {
    pub fn gather(state: &AppState, redis: &RedisStatus) -> Self {
        Self {
            size: redis.buffered,
            failed: redis.dead_letters,
            limit: Some(state.config.buffer.max_buffered),
            oldest_unforwarded_secs: redis.oldest_unforwarded_secs,
            oldest_staging_secs: redis.oldest_staging_secs,
            memory: Some(state.tree.buffer_memory.view()),
        }
    }
}

/// The event pipeline: the newest sequence number seen, websocket clients, the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventsReport {
    pub last_seq: u64,
    /// Websocket clients subscribed now.
    pub clients: u64,
    /// Events emitted and not yet published.
    pub queued: u64,
    /// Events dropped because the queue was full (this run).
    pub dropped: u64,
}

impl EventsReport {
    pub fn gather(tree: &Tree) -> Self {
        Self {
            last_seq: tree.hub.last_seq.load(Ordering::Relaxed),
            clients: tree.hub.clients() as u64,
            queued: tree.events.queued() as u64,
            dropped: tree.events.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The model registry in use: how many tables, where it came from, the last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistryReport {
    pub tables: u64,
    pub source: RegistrySource,
    /// When its content was read from the read source (for a stored copy: when that copy
    /// was read).
    pub read_at: Option<DateTime<Utc>>,
    /// Listed tables left out by the last successful read, and why.
    pub skipped: Vec<SkippedTable>,
    /// Why the latest read failed; `null` when it succeeded.
    pub error: Option<String>,
}

/// A listed table the registry leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkippedTable {
    pub table: String,
    pub reason: String,
}

impl RegistryReport {
    pub fn gather(state: &AppState) -> Self {
        let status = state.registry.status();
        Self {
            tables: status.tables as u64,
            source: status.source,
            read_at: status.read_at,
            skipped: status
                .skipped
                .into_iter()
                .map(|s| SkippedTable {
                    table: s.table,
                    reason: s.reason.to_string(),
                })
                .collect(),
            error: status.error,
        }
    }
}

/// The supervision tree: each actor's row, and why the tree gave up if it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TreeReport {
    pub actors: Vec<ActorHealth>,
    pub escalation: Option<String>,
}

impl TreeReport {
    pub fn gather(tree: &Tree) -> Self {
        Self {
            actors: tree.health.snapshot(),
            escalation: tree.health.escalation(),
        }
    }
}
