//! Admin endpoints (admin scope).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ops_db_actors::dlq::MAX_PAGE;
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
    limit: Option<String>,
    cursor: Option<String>,
}

/// A dead-letter stream id, `<ms>-<seq>`: what a page's `next_cursor` was.
fn stream_id(text: &str) -> bool {
    text.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && (ms.bytes().chain(seq.bytes())).all(|b| b.is_ascii_digit())
    })
}

fn no_such_dead_letter(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_dead_letter",
        format!("no dead letter {id:?}"),
    )
    .with_field("id")
}

/// `GET /admin/dlq?limit=N&cursor=C`: a page of the dead letters, oldest first, at most
/// `MAX_PAGE`; `more` and `next_cursor` name what follows.
pub async fn list_dead_letters(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let invalid = |field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", message).with_field(field)
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(invalid(
                "limit",
                format!("limit must be an integer from 1 to {MAX_PAGE}"),
            ))
        }
    };
    if let Some(cursor) = query.cursor.as_deref().filter(|c| !stream_id(c)) {
        return Err(invalid(
            "cursor",
            format!("{cursor:?} is not a cursor this service gave"),
        ));
    }
    let mut conn = super::redis(&state).await?;
    let keys = state.probe.keys();
    let page = ops_db_actors::dlq::list(&mut conn, keys, limit, query.cursor.as_deref())
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    Ok(Json(json!(page)))
}

/// `POST /admin/dlq/{id}/retry`: back into the buffer, at the end of the stream.
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut conn = super::redis(&state).await?;
    match ops_db_actors::dlq::retry(&mut conn, state.probe.keys(), &id)
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?
    {
        Some(stream_id) => {
            let event = json!({ "dead_letter": id, "stream_id": stream_id });
            state.tree.events.emit("dlq.retried", event);
            Ok(Json(json!({ "retried": id, "stream_id": stream_id })))
        }
        None => Err(no_such_dead_letter(&id)),
    }
}

/// `DELETE /admin/dlq/{id}`: gone for good (its lifecycle keeps `dead`, with `dropped_at`).
pub async fn drop_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut conn = super::redis(&state).await?;
    if ops_db_actors::dlq::drop(&mut conn, state.probe.keys(), &id)
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?
    {
        state
            .tree
            .events
            .emit("dlq.dropped", json!({ "dead_letter": id }));
        Ok(Json(json!({ "dropped": id })))
    } else {
        Err(no_such_dead_letter(&id))
    }
}
