//! Health, readiness, actor health and metrics. Open: no token needed.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ops_db_actors::health::ActorState;
use ops_db_actors::tree::{BUFFER, FORWARDER, INGEST, REPLICA};
use serde_json::json;

use super::AppState;

fn ingest_running(state: &AppState) -> bool {
    let h = &state.tree.health;
    h.is_running(INGEST) && h.is_running(BUFFER)
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let redis = state.probe.status().await;
    let mut reasons = Vec::new();
    if !redis.reachable {
        reasons.push("redis unreachable");
    }
    if !ingest_running(&state) {
        reasons.push("ingest actors not running");
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": reasons })),
        )
            .into_response()
    }
}

pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let redis = state.probe.status().await;
    let actors: serde_json::Map<_, _> = state
        .tree
        .health
        .snapshot()
        .into_iter()
        .map(|a| (a.name, json!(state_name(&a.state))))
        .collect();
    let status = if !redis.reachable || !ingest_running(&state) {
        "unhealthy"
    } else if !redis.durability.durable {
        "degraded"
    } else {
        "healthy"
    };
    let forwarder = forwarder(&state);
    let database = match forwarder.as_ref().map(|f| f.0) {
        None => "not_configured",
        Some("running") => "connected",
        Some("backing_off") => "unreachable",
        Some(other) => other,
    };
    Json(json!({
        "status": status,
        "site": state.config.site.name,
        "mode": state.config.site.mode,
        "database": database,
        "redis": if redis.reachable { "connected" } else { "disconnected" },
        "redis_durability": redis.durability,
        "transaction_buffer": {
            "size": redis.buffered,
            "failed": redis.dead_letters,
            "limit": state.config.buffer.max_buffered,
            "oldest_unforwarded_secs": redis.oldest_unforwarded_secs,
        },
        "background_processor": forwarder.as_ref().map_or("not_configured", |f| f.0),
        "forwarder": forwarder.map(|f| f.1),
        "replica": replica(&state),
        "actors": actors,
    }))
}

/// The replica tracker's state and the replica's lag, if there is a read source.
fn replica(state: &AppState) -> Option<serde_json::Value> {
    let tree = &state.tree;
    if !tree.has_replica {
        return None;
    }
    let row = tree.health.get(REPLICA)?;
    let m = &tree.replica_metrics;
    let replay = m.replay_lsn.load(Ordering::Relaxed);
    Some(json!({
        "state": state_name(&row.state),
        "restarts": row.restarts,
        "last_failure": row.last_failure,
        "replay_lsn": (replay > 0).then(|| ops_db_actors::lsn::Lsn(replay).to_string()),
        "lag_bytes": m.lag_bytes.load(Ordering::Relaxed),
        "lag_seconds": m.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        "marked_replicated": m.marked.load(Ordering::Relaxed),
    }))
}

/// The forwarder's state name and details, if there is one.
fn forwarder(state: &AppState) -> Option<(&'static str, serde_json::Value)> {
    let tree = &state.tree;
    if !tree.has_forwarder {
        return None;
    }
    let row = tree.health.get(FORWARDER)?;
    let m = &tree.forwarder_metrics;
    let lsn = m.last_lsn.load(Ordering::Relaxed);
    let details = json!({
        "state": state_name(&row.state),
        "restarts": row.restarts,
        "last_failure": row.last_failure,
        "batches": m.batches.load(Ordering::Relaxed),
        "applied": m.applied.load(Ordering::Relaxed),
        "skipped": m.skipped.load(Ordering::Relaxed),
        "dead": m.dead.load(Ordering::Relaxed),
        "last_commit_lsn": (lsn > 0).then(|| ops_db_actors::lsn::Lsn(lsn).to_string()),
    });
    Some((state_name(&row.state), details))
}

fn state_name(state: &ActorState) -> &'static str {
    match state {
        ActorState::Starting => "starting",
        ActorState::Running => "running",
        ActorState::BackingOff { .. } => "backing_off",
        ActorState::Stopped => "stopped",
    }
}

pub async fn actors(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "actors": state.tree.health.snapshot(),
        "escalation": state.tree.health.escalation(),
        // What the replica tracker measures, beside its row (null without a read source).
        "replica": replica(&state),
    }))
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.tree.buffer_metrics;
    let mut out = String::new();
    let counters = [
        (
            "opsdb_writes_acknowledged_total",
            "Writes made durable and acknowledged.",
            &m.acknowledged,
        ),
        (
            "opsdb_writes_replayed_total",
            "Repeated idempotency keys answered with the first response.",
            &m.replayed,
        ),
        (
            "opsdb_writes_rejected_total",
            "Writes refused: buffer full or idempotency key reused.",
            &m.rejected,
        ),
        (
            "opsdb_writes_failed_total",
            "Writes not acknowledged because Redis failed or was unreachable.",
            &m.failed,
        ),
        (
            "opsdb_buffer_pipelines_total",
            "Redis pipelines sent by the buffer (group commits).",
            &m.pipelines,
        ),
        (
            "opsdb_forwarder_batches_total",
            "Batches committed on the primary.",
            &state.tree.forwarder_metrics.batches,
        ),
        (
            "opsdb_forwarder_applied_total",
            "Transactions applied on the primary.",
            &state.tree.forwarder_metrics.applied,
        ),
        (
            "opsdb_forwarder_skipped_total",
            "Transactions found already applied (replays after a crash).",
            &state.tree.forwarder_metrics.skipped,
        ),
        (
            "opsdb_forwarder_dead_total",
            "Transactions the primary rejected for good (dead-lettered).",
            &state.tree.forwarder_metrics.dead,
        ),
        (
            "opsdb_forwarder_round_trips_total",
            "SQL messages sent to the primary.",
            &state.tree.forwarder_metrics.round_trips,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let actors = state.tree.health.snapshot();
    let _ = writeln!(out, "# HELP opsdb_actor_restarts_total Restarts of each supervised actor.\n# TYPE opsdb_actor_restarts_total counter");
    for a in &actors {
        let _ = writeln!(
            out,
            "opsdb_actor_restarts_total{{actor=\"{}\"}} {}",
            a.name, a.restarts
        );
    }
    let _ = writeln!(out, "# HELP opsdb_actor_up Whether each supervised actor is running.\n# TYPE opsdb_actor_up gauge");
    for a in &actors {
        let _ = writeln!(
            out,
            "opsdb_actor_up{{actor=\"{}\"}} {}",
            a.name,
            u8::from(a.state == ActorState::Running)
        );
    }
    let redis = state.probe.status().await;
    let _ = writeln!(out, "# HELP opsdb_redis_up Whether Redis answered.\n# TYPE opsdb_redis_up gauge\nopsdb_redis_up {}", u8::from(redis.reachable));
    if state.tree.has_replica {
        let m = &state.tree.replica_metrics;
        let _ = writeln!(out, "# HELP opsdb_replica_lag_bytes WAL bytes between the newest forwarded commit and the replica's replay position.\n# TYPE opsdb_replica_lag_bytes gauge\nopsdb_replica_lag_bytes {}", m.lag_bytes.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP opsdb_replica_lag_seconds Age of the oldest forwarded transaction not yet seen replicated.\n# TYPE opsdb_replica_lag_seconds gauge\nopsdb_replica_lag_seconds {}", m.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        let _ = writeln!(out, "# HELP opsdb_replicated_total Transactions seen replicated.\n# TYPE opsdb_replicated_total counter\nopsdb_replicated_total {}", m.marked.load(Ordering::Relaxed));
    }
    if let Some(age) = redis.oldest_unforwarded_secs {
        let _ = writeln!(out, "# HELP opsdb_oldest_unforwarded_seconds Age of the oldest transaction not yet forwarded.\n# TYPE opsdb_oldest_unforwarded_seconds gauge\nopsdb_oldest_unforwarded_seconds {age}");
    }
    if let Some(n) = redis.buffered {
        let _ = writeln!(out, "# HELP opsdb_buffer_transactions Transactions buffered and not yet forwarded.\n# TYPE opsdb_buffer_transactions gauge\nopsdb_buffer_transactions {n}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
