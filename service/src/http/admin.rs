//! Admin endpoints (admin scope).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::ops::ApiError;

/// Fault drills: kills an actor of the tree; the supervisor restarts it by its policy.
pub async fn kill_actor(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.config.faults.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "faults_disabled",
            "fault drills need faults.enabled = true in the config",
        ));
    }
    if state.tree.kill(&name).await {
        Ok(Json(json!({ "killed": name })))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_actor",
            format!("no running actor named {name:?}"),
        )
        .with_field("name"))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
}

fn no_such_dead_letter(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_dead_letter",
        format!("no dead letter {id:?}"),
    )
    .with_field("id")
}

/// `GET /admin/dlq?limit=N`: the oldest dead letters first.
pub async fn list_dead_letters(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let mut conn = state
        .probe
        .conn()
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    let letters = ops_db_actors::dlq::list(&mut conn, state.probe.keys(), limit)
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    Ok(Json(json!({ "dead_letters": letters })))
}

/// `POST /admin/dlq/{id}/retry`: back into the buffer, at the end of the stream.
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut conn = state
        .probe
        .conn()
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    match ops_db_actors::dlq::retry(&mut conn, state.probe.keys(), &id)
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?
    {
        Some(stream_id) => Ok(Json(json!({ "retried": id, "stream_id": stream_id }))),
        None => Err(no_such_dead_letter(&id)),
    }
}

/// `DELETE /admin/dlq/{id}`: gone for good (its lifecycle keeps `dead`, with `dropped_at`).
pub async fn drop_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut conn = state
        .probe
        .conn()
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    if ops_db_actors::dlq::drop(&mut conn, state.probe.keys(), &id)
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?
    {
        Ok(Json(json!({ "dropped": id })))
    } else {
        Err(no_such_dead_letter(&id))
    }
}
