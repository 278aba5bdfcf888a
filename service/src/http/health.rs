//! Health, readiness, actor health and metrics. Open: no token needed.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::encoding::text::encode;
use serde_json::json;

use super::AppState;
use crate::health_report::{ActorsReport, HealthReport, Readiness};

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
    let readiness = Readiness::judge(redis.reachable, &state.tree);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

#[utoipa::path(get, path = "/health", tag = "health",
    summary = "The service's health",
    description = "`status` (`healthy`, `degraded`: Redis not durable, writes refused for its memory or disk, the replica stale or its history in doubt, `unhealthy`: Redis down or \
        the ingest actors not running), Redis and its durability and disk, the buffer, the \
        database link, the forwarder, the replica, the events, the model registry, the token \
        sources, each actor's state and the supervision tree. The periodic `health` event \
        carries the same report. Always 200: readiness is `/health/ready`.",
    responses((status = 200, description = "The health report (see the README)", body = HealthReport)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthReport> {
    Json(HealthReport::gather(&state).await)
}

#[utoipa::path(get, path = "/health/actors", tag = "health",
    summary = "The supervision tree: each actor's state, restarts, last failure",
    responses((status = 200, description = "Each actor, the escalation if the tree gave up, the replica's lag", body = ActorsReport)))]
pub async fn actors(State(state): State<AppState>) -> Json<ActorsReport> {
    Json(ActorsReport::gather(&state))
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
