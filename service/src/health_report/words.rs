//! The report's status words, as enums. Each has an `unknown` that this service never
//! sends: it is what a client reads for a word of a newer service that this build does not
//! know, so one new word does not make a whole report unreadable.

use ops_db_actors::health::ActorState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The service as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    /// Redis answers, but it is not durable (`redis_durability.problems` says why), writes
    /// are refused for its memory or disk (`transaction_buffer.memory.refusing_writes`,
    /// `redis_storage.refusing_writes`), the replica is stale (`replica.freshness`) or the
    /// primary's history is in doubt (`history.consistent` is false).
    Degraded,
    /// Redis does not answer, or the ingest actors (ingest, buffer) do not run.
    Unhealthy,
    #[serde(other)]
    Unknown,
}

impl HealthStatus {
    /// The rule: unhealthy when writes cannot be taken, degraded when they can but something
    /// is not `sound` (Redis not durable, writes refused for memory or disk, the replica
    /// stale, the history in doubt), healthy otherwise.
    pub fn judge(redis_reachable: bool, ingest_running: bool, sound: bool) -> Self {
        if !redis_reachable || !ingest_running {
            Self::Unhealthy
        } else if !sound {
            Self::Degraded
        } else {
            Self::Healthy
        }
    }
}

/// Whether health's own Redis connection answered (the original's `redis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisLink {
    Connected,
    Disconnected,
    #[serde(other)]
    Unknown,
}

/// The link to the primary as the forwarder's state says it (the original's `database`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseState {
    /// No `forwarder.primary_url`: nothing is forwarded.
    NotConfigured,
    /// The forwarder runs.
    Connected,
    /// The forwarder backs off after a failure.
    Unreachable,
    Starting,
    Stopped,
    #[serde(other)]
    Unknown,
}

impl DatabaseState {
    /// From the forwarder's state (`None`: no forwarder).
    pub fn of(forwarder: Option<&ActorState>) -> Self {
        match forwarder.map(ActorStatus::of) {
            None => Self::NotConfigured,
            Some(ActorStatus::Running) => Self::Connected,
            Some(ActorStatus::BackingOff) => Self::Unreachable,
            Some(ActorStatus::Starting) => Self::Starting,
            Some(ActorStatus::Stopped) => Self::Stopped,
            Some(ActorStatus::Unknown) => Self::Unknown,
        }
    }
}

/// A supervised actor's state as one word (the rows of `/health/actors` say more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Starting,
    Running,
    BackingOff,
    Stopped,
    #[serde(other)]
    Unknown,
}

impl ActorStatus {
    pub fn of(state: &ActorState) -> Self {
        match state {
            ActorState::Starting => Self::Starting,
            ActorState::Running => Self::Running,
            ActorState::BackingOff { .. } => Self::BackingOff,
            ActorState::Stopped => Self::Stopped,
            ActorState::Unknown => Self::Unknown,
        }
    }
}

/// The forwarder's state, or `not_configured` (the original's `background_processor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessorState {
    NotConfigured,
    Starting,
    Running,
    BackingOff,
    Stopped,
    #[serde(other)]
    Unknown,
}

impl ProcessorState {
    /// From the forwarder's state (`None`: no forwarder).
    pub fn of(forwarder: Option<&ActorState>) -> Self {
        match forwarder.map(ActorStatus::of) {
            None => Self::NotConfigured,
            Some(ActorStatus::Starting) => Self::Starting,
            Some(ActorStatus::Running) => Self::Running,
            Some(ActorStatus::BackingOff) => Self::BackingOff,
            Some(ActorStatus::Stopped) => Self::Stopped,
            Some(ActorStatus::Unknown) => Self::Unknown,
        }
    }
}
