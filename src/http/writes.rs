//! The write endpoints. Each is the same three steps: parse, ingest, answer.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use ops_db_actors::domain::OperationKind;

use crate::ops::{self, ApiError};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

type Body = Result<Bytes, BytesRejection>;
type Id = Result<Path<String>, PathRejection>;

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the configured limit",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "the request body could not be read",
        )
    }
}

async fn write(
    state: &AppState,
    kind: OperationKind,
    id: Option<Id>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection).into_response(),
    };
    let id = match id.transpose() {
        Ok(id) => id.map(|Path(id)| id),
        Err(_) => return ops::invalid_id("(undecodable)").into_response(),
    };
    let key = headers.get(IDEMPOTENCY_KEY).map(|v| v.as_bytes());
    match ops::write(
        &state.tree,
        state.write_timeout,
        kind,
        id.as_deref(),
        &body,
        key,
    )
    .await
    {
        Ok((status, ack)) => (status, Json(ack.body)).into_response(),
        Err(err) => err.into_response(),
    }
}

pub async fn start_executed_obs_unit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(
        &s,
        OperationKind::StartExecutedObsUnit,
        None,
        &headers,
        body,
    )
    .await
}

pub async fn finish_executed_obs_unit(
    State(s): State<AppState>,
    id: Id,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(
        &s,
        OperationKind::FinishExecutedObsUnit,
        Some(id),
        &headers,
        body,
    )
    .await
}

pub async fn create_raw_data_file(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(&s, OperationKind::CreateRawDataFile, None, &headers, body).await
}

pub async fn bulk_create_raw_data_files(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(
        &s,
        OperationKind::BulkCreateRawDataFiles,
        None,
        &headers,
        body,
    )
    .await
}

pub async fn create_raw_data_package(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(
        &s,
        OperationKind::CreateRawDataPackage,
        None,
        &headers,
        body,
    )
    .await
}

pub async fn finalize_raw_data_package(
    State(s): State<AppState>,
    id: Id,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(
        &s,
        OperationKind::FinalizeRawDataPackage,
        Some(id),
        &headers,
        body,
    )
    .await
}
