//! [`HealthReport`]: the service's health as one type, the only shape of it.
//!
//! Guarantees:
//! - **One shape.** `GET /health` serialises it; `GET /health/actors` is its tree and its
//!   replica section ([`ActorsReport`]); the periodic `health` event is it (its members
//!   beside the event's `seq`, `type` and `at`); `ops-db-api status` and the dashboard read
//!   it; the OpenAPI document's `HealthReport` schema is derived from it.
//! - **Built in one place**, [`HealthReport::gather`]: one Redis read (health's own
//!   connection, bounded by `redis.timeout`), the rest from in-process state (atomics, the
//!   health registry); never a call to an actor, never the ingest path's connection.
//! - **Readable across versions.** The original service's keys (`status`, `database`,
//!   `redis`, `transaction_buffer`, `background_processor`) are always there; every other
//!   section is optional, and one that is missing or shaped in a way this build does not
//!   know reads as `null` ([`lenient`]); a status word it does not know reads as
//!   `unknown`; fields it does not know are ignored. So a client of one version reads the
//!   report of an older or a newer service.
//!
//! A new section: a struct of its own (`Serialize`, `Deserialize`, `ToSchema`,
//! `PartialEq`) with a `gather`, in a file of its own here; a field `Option<Section>` with
//! `#[serde(default, deserialize_with = "lenient")]` in [`HealthReport`], set in `gather`.

mod forwarder;
mod replica;
mod sections;
#[cfg(test)]
mod tests;
mod words;

use std::collections::BTreeMap;
use std::time::Duration;

use ops_db_actors::buffer::storage::StorageView;
use ops_db_actors::tree::{Tree, BUFFER, FORWARDER, INGEST, NOTIFIER};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

pub use forwarder::ForwarderReport;
pub use ops_db_actors::buffer::memory::MemoryView;
pub use ops_db_actors::forwarder::lease::Role;
pub use ops_db_actors::forwarder::Link;
pub use ops_db_actors::health::{ActorHealth, ActorState, Failure};
pub use ops_db_actors::history::HistoryView;
pub use ops_db_actors::registry::Source as RegistrySource;
pub use ops_db_actors::resend::WindowView;
pub use replica::ReplicaReport;
pub use sections::{EventsReport, RegistryReport, SkippedTable, TransactionBuffer, TreeReport};
pub use words::{ActorStatus, DatabaseState, HealthStatus, ProcessorState, RedisLink};

pub use crate::config::SiteMode;
use crate::http::AppState;
pub use crate::http::{TokenOrigin, TokenSourceStatus, TokensHealth};
pub use crate::redis_access::RedisAccess;
pub use crate::redis_probe::Durability;

/// The service's health (`GET /health`, the `health` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// `healthy`; `degraded`: Redis is not durable; `unhealthy`: Redis does not answer or
    /// the ingest actors do not run. Readiness is `/health/ready`.
    pub status: HealthStatus,
    /// `site.name`.
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub mode: Option<SiteMode>,
    pub database: DatabaseState,
    pub redis: RedisLink,
    /// Whether acknowledged writes survive a Redis crash and are never evicted.
    #[serde(default, deserialize_with = "lenient")]
    pub redis_durability: Option<Durability>,
    /// How the service reaches Redis (unix socket or loopback, its ACL user) and whether
    /// Redis refuses a client without credentials; `problems` says what leaves it open
    /// (read at most once a minute).
    #[serde(default, deserialize_with = "lenient")]
    pub redis_access: Option<RedisAccess>,
    /// Redis' disk: AOF status and size, free space, whether writes are refused for it.
    #[serde(default, deserialize_with = "lenient")]
    pub redis_storage: Option<StorageView>,
    pub transaction_buffer: TransactionBuffer,
    pub background_processor: ProcessorState,
    /// `null` without a primary.
    #[serde(default, deserialize_with = "lenient")]
    pub forwarder: Option<ForwarderReport>,
    /// `null` without a read source.
    #[serde(default, deserialize_with = "lenient")]
    pub replica: Option<ReplicaReport>,
    /// Whether the primary and the replica still hold what was forwarded: their identity
    /// (system identifier, timeline) and changes of it, transactions the replica's ledger
    /// lacks. `consistent: false` makes `status` `degraded`: see OPERATIONS, "Cologne
    /// failed over or was restored".
    #[serde(default, deserialize_with = "lenient")]
    pub history: Option<HistoryView>,
    /// The resend window (`resend.window`, `resend.max_bytes`); `null` when Redis did not
    /// answer.
    #[serde(default, deserialize_with = "lenient")]
    pub resend_window: Option<WindowView>,
    #[serde(default, deserialize_with = "lenient")]
    pub events: Option<EventsReport>,
    /// The model registry in use.
    #[serde(default, deserialize_with = "lenient")]
    pub registry: Option<RegistryReport>,
    /// Each configured token source (`null`: not configured).
    #[serde(default, deserialize_with = "lenient")]
    pub tokens: Option<TokensHealth>,
    /// Each actor's state, by name (the rows are in `tree`).
    #[serde(default)]
    pub actors: BTreeMap<String, ActorStatus>,
    /// The supervision tree, as `/health/actors` shows it.
    #[serde(default, deserialize_with = "lenient")]
    pub tree: Option<TreeReport>,
}

/// `GET /health/actors`: the supervision tree and, beside its row, what the replica
/// tracker measures. The parts of [`HealthReport`] that need no Redis read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActorsReport {
    #[serde(default)]
    pub actors: Vec<ActorHealth>,
    /// Why the tree gave up, if it did.
    #[serde(default)]
    pub escalation: Option<String>,
    /// `null` without a read source.
    #[serde(default, deserialize_with = "lenient")]
    pub replica: Option<ReplicaReport>,
}

/// `GET /health/ready`: 200 with `{"ready": true}`, or 503 with the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not ready (absent when ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Readiness {
    /// Redis answers (`redis_reachable`) and the ingest actors run.
    pub fn judge(redis_reachable: bool, tree: &Tree) -> Self {
        let mut reasons = Vec::new();
        if !redis_reachable {
            reasons.push("redis unreachable".to_owned());
        }
        if !ingest_running(tree) {
            reasons.push("ingest actors not running".to_owned());
        }
        Self {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

impl HealthReport {
    /// The report now: one Redis read, the rest from in-process state.
    pub async fn gather(state: &AppState) -> Self {
        let redis = state.probe.status().await;
        let tree = &state.tree;
        let forwarder_state = tree
            .has_forwarder
            .then(|| tree.health.get(FORWARDER).map(|row| row.state))
            .flatten();
        let tree_report = TreeReport::gather(tree);
        let actors = tree_report
            .actors
            .iter()
            .map(|a| (a.name.clone(), ActorStatus::of(&a.state)))
            .collect();
        let replica = ReplicaReport::gather(state);
        let history = tree.history.view();
        let storage = tree.buffer_memory.storage_view();
        let refusing = storage.refusing_writes || tree.buffer_memory.view().refusing_writes;
        let doubts = replica
            .as_ref()
            .and_then(|r| r.freshness.as_ref())
            .is_some_and(|f| f.verdict == "stale")
            || !history.consistent
            || refusing;
        let resend_window = redis.window.map(|(entries, bytes, oldest)| WindowView {
            entries,
            bytes,
            max_bytes: state.config.resend.max_bytes,
            oldest_at: oldest
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            window_secs: state.config.resend.window.as_secs(),
        });
        Self {
            status: HealthStatus::judge(
                redis.reachable,
                ingest_running(tree),
                redis.durability.durable && !doubts,
            ),
            site: Some(state.config.site.name.clone()),
            mode: Some(state.config.site.mode),
            database: DatabaseState::of(forwarder_state.as_ref()),
            redis: if redis.reachable {
                RedisLink::Connected
            } else {
                RedisLink::Disconnected
            },
            transaction_buffer: TransactionBuffer::gather(state, &redis),
            redis_durability: Some(redis.durability),
            redis_access: state.probe.access().await,
            redis_storage: Some(storage),
            background_processor: ProcessorState::of(forwarder_state.as_ref()),
            forwarder: ForwarderReport::gather(state),
            replica,
            history: Some(history),
            resend_window,
            events: Some(EventsReport::gather(tree)),
            registry: Some(RegistryReport::gather(state)),
            tokens: Some(state.tokens.health()),
            actors,
            tree: Some(tree_report),
        }
    }
}

impl ActorsReport {
    /// The tree and the replica section now (no Redis read).
    pub fn gather(state: &AppState) -> Self {
        let tree = TreeReport::gather(&state.tree);
        Self {
            actors: tree.actors,
            escalation: tree.escalation,
            replica: ReplicaReport::gather(state),
        }
    }
}

/// Whether the actors that take writes (ingest, buffer) run: readiness and `status`.
pub fn ingest_running(tree: &Tree) -> bool {
    tree.health.is_running(INGEST) && tree.health.is_running(BUFFER)
}

/// A section, or `None` when it is missing, `null`, or not readable as `T` (a newer or
/// older service's shape): one section never makes the whole report unreadable.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value::<Option<T>>(value).ok().flatten())
}

/// Emits the report as a `health` event every `every` until `stop`: the event is the
/// report's members beside `seq`, `type` and `at`. Emitting never waits (see
/// `EventSink`); gathering waits at most for the Redis read's timeout. A tick is skipped
/// while the event could not be published ([`publishable`]).
pub async fn emit_every(state: AppState, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !state.tree.health.is_running(NOTIFIER) {
            continue;
        }
        let report = HealthReport::gather(&state).await;
        if !publishable(state.tree.health.is_running(NOTIFIER), report.redis) {
            continue;
        }
        match serde_json::to_value(&report) {
            Ok(body) => state.tree.events.emit("health", body),
            Err(err) => tracing::warn!(error = %err, "the health report could not be serialised"),
        }
    }
}

/// Whether a `health` event would be published now: only the notifier publishes, over
/// Redis. While either is down a report would wait in the event queue and come out late,
/// stale, among its like (a day's outage is some 17,000 of them): `/health` still answers.
fn publishable(notifier_running: bool, redis: RedisLink) -> bool {
    notifier_running && redis == RedisLink::Connected
}
