//! Health, readiness, actor health and metrics. Open: no token needed.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ops_db_actors::health::ActorState;
use ops_db_actors::tree::{BUFFER, FORWARDER, INGEST, REPLICA};
use prometheus_client::encoding::text::encode;
use serde_json::json;

use super::openapi::schemas::{ActorsReport, Readiness};
use super::AppState;

fn ingest_running(state: &AppState) -> bool {
    let h = &state.tree.health;
    h.is_running(INGEST) && h.is_running(BUFFER)
}

#[utoipa::path(get, path = "/health/live", tag = "health", summary = "Liveness: 200 while the process answers",
    responses((status = 200, description = "`{\"status\": \"alive\"}`", body = Object)))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    summary = "Readiness: Redis answers and the ingest actors run",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `reasons` says why", body = Readiness),
    ))]
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

#[utoipa::path(get, path = "/health", tag = "health",
    summary = "The service's health",
    description = "`status` (`healthy`, `degraded`: Redis not durable or the replica stale, `unhealthy`: Redis down or \
        the ingest actors not running), Redis and its durability, the buffer, the database \
        link, the forwarder, the replica, the events, the model registry, the token sources, each actor's state. Always 200: \
        readiness is `/health/ready`.",
    responses((status = 200, description = "The health report (see the README)", body = Object)))]
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
    } else if !redis.durability.durable || replica_stale(&state) {
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
        "redis_storage": state.tree.buffer_memory.storage_view(),
        "transaction_buffer": {
            "size": redis.buffered,
            "failed": redis.dead_letters,
            "limit": state.config.buffer.max_buffered,
            "oldest_unforwarded_secs": redis.oldest_unforwarded_secs,
            "memory": state.tree.buffer_memory.view(),
        },
        "background_processor": forwarder.as_ref().map_or("not_configured", |f| f.0),
        "forwarder": forwarder.map(|f| f.1),
        "replica": replica(&state),
        "events": {
            "last_seq": state.tree.hub.last_seq.load(Ordering::Relaxed),
            "clients": state.tree.hub.clients(),
            "queued": state.tree.events.queued(),
            "dropped": state.tree.events.dropped.load(Ordering::Relaxed),
        },
        "registry": state.registry.status(),
        "tokens": state.tokens.health(),
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
        "lag_bytes": m.lag_bytes.get(),
        "lag_seconds": m.lag_seconds.get(),
        "marked_replicated": m.marked.get(),
        "freshness": m.freshness.view(),
    }))
}

/// Whether the replica is stale (`replica.freshness`): `/health` then says `degraded`.
fn replica_stale(state: &AppState) -> bool {
    state.tree.has_replica && state.tree.replica_metrics.freshness.is_stale()
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
        "batches": m.batches.get(),
        "applied": m.applied.get(),
        "skipped": m.skipped.get(),
        "dead": m.dead.get(),
        "largest_batch_bytes": m.largest_batch_bytes.load(Ordering::Relaxed),
        "batch_max_bytes": state.config.forwarder.batch_max_bytes,
        "last_commit_lsn": (lsn > 0).then(|| ops_db_actors::lsn::Lsn(lsn).to_string()),
        "link": m.link(),
        // Set while batches are split after one failed without a culprit (a timeout).
        "batch_limit": match m.batch_limit.load(Ordering::Relaxed) {
            0 => None,
            limit => Some(limit),
        },
        "role": m.lease.role(state.config.forwarder.lease_ttl),
        "instance": m.lease.instance,
        "lease_holder": m.lease.holder(),
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

#[utoipa::path(get, path = "/health/actors", tag = "health",
    summary = "The supervision tree: each actor's state, restarts, last failure",
    responses((status = 200, description = "Each actor, the escalation if the tree gave up, the replica's lag", body = ActorsReport)))]
pub async fn actors(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "actors": state.tree.health.snapshot(),
        "escalation": state.tree.health.escalation(),
        // What the replica tracker measures, beside its row (null without a read source).
        "replica": replica(&state),
    }))
}

/// The OpenMetrics content type, which is what [`encode`] writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every registered metric, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    summary = "Every metric, in the OpenMetrics text format",
    responses(
        (status = 200, description = "The metrics (listed in the README)", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 500, description = "The metrics could not be encoded (empty body)"),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The Redis values are exported from the probe's last read: read them now.
    state.probe.status().await;
    let mut out = String::new();
    if let Err(err) = encode(&mut out, &state.metrics) {
        tracing::warn!(error = %err, "metrics could not be encoded");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], out).into_response()
}
