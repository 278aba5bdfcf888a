//! The supervisor's health registry: what operators read at `/health/actors`.
//!
//! Written only by the supervisor; read by anyone holding the `Arc`. Timestamps are wall
//! clock (for humans); uptime is measured on the monotonic clock.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::events::EventSink;

/// Where a supervised actor is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ActorState {
    Starting,
    Running,
    /// Waiting out its restart backoff.
    BackingOff {
        until: DateTime<Utc>,
    },
    Stopped,
    /// Never set here: what a client reads for a state this build does not know (a newer
    /// service's).
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Entry {
    state: ActorState,
    restarts: u64,
    last_failure: Option<Failure>,
    running_since: Option<Instant>,
}

/// One actor's row of `/health/actors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActorHealth {
    pub name: String,
    #[serde(flatten)]
    pub state: ActorState,
    pub restarts: u64,
    pub last_failure: Option<Failure>,
    /// Seconds since the current incarnation started; `null` when not running.
    pub uptime_secs: Option<f64>,
}

#[derive(Debug, Default)]
pub struct HealthRegistry {
    actors: RwLock<BTreeMap<String, Entry>>,
    escalation: RwLock<Option<String>>,
    /// Where supervision events go (`actor.failed`, `actor.restarted`, `actor.escalated`).
    events: Option<Arc<EventSink>>,
}

impl HealthRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that also emits supervision events into `events`.
    pub fn with_events(events: Arc<EventSink>) -> Self {
        Self {
            events: Some(events),
            ..Self::default()
        }
    }

    fn emit(&self, kind: &str, body: serde_json::Value) {
        if let Some(events) = &self.events {
            events.emit(kind, body);
        }
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let mut actors = self.actors.write().unwrap_or_else(|e| e.into_inner());
        let entry = actors.entry(name.to_owned()).or_insert(Entry {
            state: ActorState::Starting,
            restarts: 0,
            last_failure: None,
            running_since: None,
        });
        f(entry);
    }

    pub fn starting(&self, name: &str) {
        self.update(name, |e| {
            e.state = ActorState::Starting;
            e.running_since = None;
        });
    }

    pub fn running(&self, name: &str) {
        self.update(name, |e| {
            e.state = ActorState::Running;
            e.running_since = Some(Instant::now());
        });
    }

    pub fn failed(&self, name: &str, reason: String, backing_off_until: DateTime<Utc>) {
        self.update(name, |e| {
            e.state = ActorState::BackingOff {
                until: backing_off_until,
            };
            e.running_since = None;
            e.last_failure = Some(Failure {
                reason: reason.clone(),
                at: Utc::now(),
            });
        });
        self.emit(
            "actor.failed",
            serde_json::json!({ "actor": name, "reason": reason, "backing_off_until": backing_off_until }),
        );
    }

    pub fn restarted(&self, name: &str) {
        let mut restarts = 0;
        self.update(name, |e| {
            e.restarts += 1;
            restarts = e.restarts;
        });
        self.emit(
            "actor.restarted",
            serde_json::json!({ "actor": name, "restarts": restarts }),
        );
    }

    pub fn stopped(&self, name: &str, failure: Option<String>) {
        self.update(name, |e| {
            e.state = ActorState::Stopped;
            e.running_since = None;
            if let Some(reason) = failure {
                e.last_failure = Some(Failure {
                    reason,
                    at: Utc::now(),
                });
            }
        });
    }

    /// Records that the tree gave up (restart intensity exceeded).
    pub fn escalate(&self, reason: String) {
        self.emit("actor.escalated", serde_json::json!({ "reason": reason }));
        *self.escalation.write().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// Why the tree gave up, if it did.
    pub fn escalation(&self) -> Option<String> {
        self.escalation
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.actors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|e| e.state == ActorState::Running)
    }

    pub fn snapshot(&self) -> Vec<ActorHealth> {
        let now = Instant::now();
        self.actors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, e)| ActorHealth {
                name: name.clone(),
                state: e.state.clone(),
                restarts: e.restarts,
                last_failure: e.last_failure.clone(),
                uptime_secs: e.running_since.map(|t| now.duration_since(t).as_secs_f64()),
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<ActorHealth> {
        self.snapshot().into_iter().find(|a| a.name == name)
    }

    /// Registers `opsdb_actor_restarts_total{actor}` and `opsdb_actor_up{actor}`, read from
    /// this registry at each scrape.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(ActorMetrics(Arc::clone(self))));
    }
}

/// The registry's rows as metrics. Read at scrape time rather than mirrored into metric
/// values, so `/metrics` and `/health/actors` cannot disagree.
#[derive(Debug)]
struct ActorMetrics(Arc<HealthRegistry>);

impl Collector for ActorMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let actors = self.0.snapshot();
        let mut restarts = encoder.encode_descriptor(
            "opsdb_actor_restarts",
            "Restarts of each supervised actor.",
            None,
            MetricType::Counter,
        )?;
        for a in &actors {
            let labels = [("actor", a.name.as_str())];
            ConstCounter::new(a.restarts).encode(restarts.encode_family(&labels)?)?;
        }
        let mut up = encoder.encode_descriptor(
            "opsdb_actor_up",
            "Whether each supervised actor is running.",
            None,
            MetricType::Gauge,
        )?;
        for a in &actors {
            let labels = [("actor", a.name.as_str())];
            let running = i64::from(a.state == ActorState::Running);
            ConstGauge::new(running).encode(up.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_metrics_follow_the_registry() {
        let health = Arc::new(HealthRegistry::new());
        let mut registry = Registry::default();
        health.register(&mut registry);
        health.starting("buffer");
        health.running("buffer");
        health.starting("ingest");
        health.failed("ingest", "boom".into(), Utc::now());
        health.restarted("ingest");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            r#"opsdb_actor_restarts_total{actor="buffer"} 0"#,
            r#"opsdb_actor_restarts_total{actor="ingest"} 1"#,
            r#"opsdb_actor_up{actor="buffer"} 1"#,
            r#"opsdb_actor_up{actor="ingest"} 0"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }
}
