//! Read endpoints (any valid token): merged records and transaction lifecycles. The reads
//! themselves are `ops_db_actors::overlay::Reads`; this module maps their answers and
//! errors to HTTP.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ops_db_actors::domain::Table;
use ops_db_actors::overlay::{IndexValue, ReadError};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use uuid::Uuid;

use super::AppState;
use crate::ops::{self, ApiError};

/// 503 for what did not answer (the cause is logged, never shown), 404 for what does not
/// exist. Also used by the `?wait=` loop of the write endpoints.
impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Redis(e) => ApiError::redis_unavailable(&e),
            ReadError::Source(e) => ApiError::replica_unavailable(&e),
            ReadError::NoSuchRecord { table, id } => not_found(noun(table), &id.to_string()),
            ReadError::NoSuchTransaction(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_transaction",
                format!("no transaction {id}"),
            )
            .with_field("id"),
        }
    }
}

async fn redis(state: &AppState) -> Result<MultiplexedConnection, ApiError> {
    state
        .probe
        .conn()
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))
}

/// Set when the replica did not answer and lists come from the overlay alone.
const REPLICA_HEADER: &str = "x-opsdb-replica";

/// A JSON answer, flagged when the replica did not contribute to it.
fn answer(body: Value, replica_answered: bool) -> Response {
    let mut response = Json(body).into_response();
    if !replica_answered {
        response
            .headers_mut()
            .insert(REPLICA_HEADER, HeaderValue::from_static("unavailable"));
    }
    response
}

/// What a record is called in its 404.
fn noun(table: Table) -> &'static str {
    match table {
        Table::ExecutedObsUnit => "executed obs unit",
        Table::RawDataPackage => "raw data package",
        Table::RawDataFile => "raw data file",
    }
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} {id}"),
    )
    .with_field("id")
}

pub async fn transaction(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = ops::parse_id(&id)?;
    Ok(Json(
        state
            .reads
            .transaction(&mut redis(&state).await?, id)
            .await?,
    ))
}

/// An executed obs unit with its raw data packages and files (the original's smart query),
/// and whether the replica answered every part of it.
async fn executed_obs_unit_detail(
    state: &AppState,
    conn: &mut MultiplexedConnection,
    mut eou: Value,
) -> Result<(Value, bool), ApiError> {
    let Some(id) = eou["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
        return Ok((eou, true));
    };
    let reads = &state.reads;
    let key = IndexValue::Uuid(id);
    let (packages, a) = reads
        .records_where(conn, Table::RawDataPackage, "executed_obs_unit_id", key)
        .await?;
    let (files, b) = reads
        .records_where(conn, Table::RawDataFile, "executed_obs_unit_id", key)
        .await?;
    eou["raw_data_packages"] = json!(packages);
    eou["raw_data_files"] = json!(files);
    Ok((eou, a && b))
}

/// `GET /executed_obs_units/{id}`: one by UUID; an integer is taken as an obs_unit_id, as
/// the original's path was, and answers the list.
pub async fn executed_obs_unit(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if let Ok(obs_unit_id) = id.parse::<i64>() {
        return by_obs_unit(&state, obs_unit_id).await;
    }
    let id = ops::parse_id(&id)?;
    let mut conn = redis(&state).await?;
    let eou = state
        .reads
        .record(&mut conn, Table::ExecutedObsUnit, id)
        .await?;
    let (detail, replica_answered) = executed_obs_unit_detail(&state, &mut conn, eou).await?;
    Ok(answer(detail, replica_answered))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    obs_unit_id: i64,
}

/// `GET /executed_obs_units?obs_unit_id=N`.
pub async fn executed_obs_units(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            e.body_text(),
        )
        .with_field("obs_unit_id")
    })?;
    by_obs_unit(&state, query.obs_unit_id).await
}

async fn by_obs_unit(state: &AppState, obs_unit_id: i64) -> Result<Response, ApiError> {
    let mut conn = redis(state).await?;
    let key = IndexValue::Int(obs_unit_id);
    let (units, mut replica_answered) = state
        .reads
        .records_where(&mut conn, Table::ExecutedObsUnit, "obs_unit_id", key)
        .await?;
    let mut detailed = Vec::with_capacity(units.len());
    for eou in units {
        let (detail, answered) = executed_obs_unit_detail(state, &mut conn, eou).await?;
        replica_answered &= answered;
        detailed.push(detail);
    }
    Ok(answer(json!(detailed), replica_answered))
}

pub async fn raw_data_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = ops::parse_id(&id)?;
    let mut conn = redis(&state).await?;
    let file = state
        .reads
        .record(&mut conn, Table::RawDataFile, id)
        .await?;
    Ok(Json(file))
}

/// `GET /raw_data_package/{id}`: with its files.
pub async fn raw_data_package(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = ops::parse_id(&id)?;
    let mut conn = redis(&state).await?;
    let mut package = state
        .reads
        .record(&mut conn, Table::RawDataPackage, id)
        .await?;
    let (files, replica_answered) = state
        .reads
        .records_where(
            &mut conn,
            Table::RawDataFile,
            "raw_data_package_id",
            IndexValue::Uuid(id),
        )
        .await?;
    package["raw_data_files"] = json!(files);
    Ok(answer(package, replica_answered))
}
