//! Admin endpoints (admin scope).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ops_db_actors::dlq::{BadEntryId, DeadLetterPage, EntryId, MAX_PAGE};
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::openapi::schemas::{Dropped, Killed, Retried};
use super::AppState;
use crate::ops::{ApiError, ErrorBody};

/// Fault drills: kills an actor of the tree; the supervisor restarts it by its policy.
#[utoipa::path(post, path = "/admin/actors/{name}/kill", tag = "admin",
    summary = "Fault drill: kill an actor",
    description = "The supervisor restarts it by its policy; `/health/actors` shows the restart. \
        Needs `faults.enabled = true` in the config.",
    params(("name" = String, Path, description = "`ingest`, `buffer`, `forwarder`, `replica` or `notifier`")),
    responses(
        (status = 200, description = "Killed", body = Killed),
        (status = 403, description = "`faults_disabled` (or `forbidden`: the token lacks the scope)", body = ErrorBody),
        (status = 404, description = "`no_such_actor`", body = ErrorBody),
    ))]
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

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Dead letters per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(pattern = r"^[0-9]{1,19}-[0-9]{1,19}$")]
    cursor: Option<String>,
}

/// A dead letter's id from the path: a complete stream id, checked before Redis sees it
/// (Redis would refuse other text with an error, and read a bare `<ms>` as a range).
fn dead_letter_id(text: &str) -> Result<EntryId, ApiError> {
    text.parse().map_err(|e: BadEntryId| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            e.to_string(),
        )
        .with_field("id")
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
#[utoipa::path(get, path = "/admin/dlq", tag = "admin",
    summary = "A page of the dead letters, oldest first",
    params(ListQuery),
    responses(
        (status = 200, description = "The page; `next_cursor` continues it", body = DeadLetterPage),
        (status = 400, description = "`invalid_query`: an unknown parameter", body = ErrorBody),
        (status = 422, description = "`invalid_query` naming `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
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
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<EntryId>()
                .map_err(|_| invalid("cursor", format!("{c:?} is not a cursor this service gave")))
        })
        .transpose()?;
    let mut conn = super::redis(&state).await?;
    let keys = state.probe.keys();
    let page = ops_db_actors::dlq::list(&mut conn, keys, limit, cursor)
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    Ok(Json(json!(page)))
}

/// `POST /admin/dlq/{id}/retry`: back into the buffer, at the end of the stream.
#[utoipa::path(post, path = "/admin/dlq/{id}/retry", tag = "admin",
    summary = "Retry a dead letter",
    description = "It goes back into the buffer, at its end: after everything buffered meanwhile.",
    params(("id" = String, Path, pattern = r"^[0-9]{1,19}-[0-9]{1,19}$", description = "The dead letter's `id` (a stream id, `<ms>-<seq>`)")),
    responses(
        (status = 200, description = "Buffered again", body = Retried),
        (status = 404, description = "`no_such_dead_letter`", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not a stream id `<ms>-<seq>`", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = dead_letter_id(&id)?;
    let mut conn = super::redis(&state).await?;
    match ops_db_actors::dlq::retry(&mut conn, state.probe.keys(), entry)
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
#[utoipa::path(delete, path = "/admin/dlq/{id}", tag = "admin",
    summary = "Drop a dead letter for good",
    description = "Its transaction's lifecycle stays `dead`, now for `replica.retention`.",
    params(("id" = String, Path, pattern = r"^[0-9]{1,19}-[0-9]{1,19}$", description = "The dead letter's `id` (a stream id, `<ms>-<seq>`)")),
    responses(
        (status = 200, description = "Dropped", body = Dropped),
        (status = 404, description = "`no_such_dead_letter`", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not a stream id `<ms>-<seq>`", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn drop_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = dead_letter_id(&id)?;
    let mut conn = super::redis(&state).await?;
    let retention = state.config.replica.retention;
    if ops_db_actors::dlq::drop(&mut conn, state.probe.keys(), entry, retention)
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
