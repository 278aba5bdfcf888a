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
use ops_db_actors::overlay::{IndexValue, PageRequest, ReadError};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use utoipa::IntoParams;
use uuid::Uuid;

use super::openapi::schemas::{Lifecycle, Record, RecordOrList};
use super::{paging, redis, AppState};
use crate::ops::{self, ApiError, ErrorBody};

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

/// A transaction's lifecycle
///
/// From Redis while it keeps it, after `replica.retention` from the ledger on the read
/// source.
#[utoipa::path(get, path = "/transactions/{id}", tag = "reads",
    params(("id" = Uuid, Path, description = "The transaction's id, as its write answered")),
    responses(
        (status = 200, description = "Its state and the time of each transition", body = Lifecycle),
        (status = 404, description = "`no_such_transaction`", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not a UUID", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`, `replica_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
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

/// The query of a detail read: `limit` bounds its nested lists; a nested list continues
/// from the cursor its previous answer gave. Unknown parameters are ignored, as before.
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DetailQuery {
    /// Records per page of each nested list, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// For an integer id (a list by obs unit): the `x-next-cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{32}$")]
    cursor: Option<String>,
    /// The previous answer's `raw_data_packages_next_cursor`.
    #[param(pattern = r"^[0-9a-fA-F]{32}$")]
    packages_cursor: Option<String>,
    /// The previous answer's `raw_data_files_next_cursor`.
    #[param(pattern = r"^[0-9a-fA-F]{32}$")]
    files_cursor: Option<String>,
}

impl DetailQuery {
    /// The page of the nested list whose cursor parameter is `field`.
    fn page(&self, field: &str) -> Result<PageRequest, ApiError> {
        let cursor = match field {
            "packages_cursor" => &self.packages_cursor,
            "files_cursor" => &self.files_cursor,
            _ => &self.cursor,
        };
        paging::page(self.limit.as_deref(), cursor.as_deref(), field)
    }
}

fn invalid_query(err: QueryRejection, field: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        err.body_text(),
    )
    .with_field(field)
}

/// One page of a nested list, set on `record` as `name` and `<name>_next_cursor`; whether
/// the replica answered.
async fn nest(
    state: &AppState,
    conn: &mut MultiplexedConnection,
    record: &mut Value,
    name: &str,
    list: (Table, &str, Uuid),
    page: PageRequest,
) -> Result<bool, ApiError> {
    let (table, column, id) = list;
    let listed = state
        .reads
        .records_where(conn, table, column, IndexValue::Uuid(id), page)
        .await?;
    record[name] = json!(listed.records);
    record[format!("{name}_next_cursor")] = paging::cursor_value(listed.next);
    Ok(listed.source_answered)
}

/// An executed obs unit with a page of its raw data packages and of its files (the
/// original's smart query), and whether the replica answered every part of it.
async fn executed_obs_unit_detail(
    state: &AppState,
    conn: &mut MultiplexedConnection,
    mut eou: Value,
    pages: (PageRequest, PageRequest),
) -> Result<(Value, bool), ApiError> {
    let Some(id) = eou["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
        return Ok((eou, true));
    };
    let packages = (Table::RawDataPackage, "executed_obs_unit_id", id);
    let files = (Table::RawDataFile, "executed_obs_unit_id", id);
    let a = nest(
        state,
        conn,
        &mut eou,
        "raw_data_packages",
        packages,
        pages.0,
    )
    .await?;
    let b = nest(state, conn, &mut eou, "raw_data_files", files, pages.1).await?;
    Ok((eou, a && b))
}

/// `GET /executed_obs_units/{id}`: one by UUID; an integer is taken as an obs_unit_id, as
/// the original's path was, and answers the list.
#[utoipa::path(get, path = "/executed_obs_units/{id}", tag = "reads",
    summary = "An executed obs unit, with a page of its packages and of its files",
    description = "An integer `id` is taken as an `obs_unit_id` (as the original's path was) \
        and answers a page of its executed obs units, like `GET /executed_obs_units`.",
    params(("id" = String, Path, pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[1-9][0-9]{0,17})$", description = "A UUID, or an integer obs_unit_id above 0"), DetailQuery),
    responses(
        (status = 200, description = "The record, with `raw_data_packages`, `raw_data_files` and \
            their `_next_cursor`s; for an integer id a JSON array of them", body = RecordOrList,
            headers(("x-opsdb-replica" = String, description = "`unavailable` when the replica did not answer"),
                ("x-next-cursor" = String, description = "For an integer id: the next page's cursor, absent on the last"))),
        (status = 404, description = "`not_found`: no such record", body = ErrorBody),
        (status = 422, description = "`invalid_id`, `invalid_query` (naming `limit` or the cursor)", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`, `replica_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn executed_obs_unit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| invalid_query(e, "query"))?;
    if let Ok(obs_unit_id) = id.parse::<i64>() {
        let obs_unit_id = positive(obs_unit_id, "id")?;
        let page = query.page("cursor")?;
        return by_obs_unit(&state, obs_unit_id, page).await;
    }
    let id = ops::parse_id(&id)?;
    // Every parameter is checked before anything is read (`cursor`, the integer form's,
    // too: a parameter the document describes is never silently ignored when malformed).
    query.page("cursor")?;
    let pages = (query.page("packages_cursor")?, query.page("files_cursor")?);
    let mut conn = redis(&state).await?;
    let eou = state
        .reads
        .record(&mut conn, Table::ExecutedObsUnit, id)
        .await?;
    let (detail, replica_answered) =
        executed_obs_unit_detail(&state, &mut conn, eou, pages).await?;
    Ok(answer(detail, replica_answered))
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(minimum = 1)]
    obs_unit_id: i64,
    /// Records per page, 1 to 1000 (default 100). Each record's nested lists hold their
    /// first 10 (the `_next_cursor`s continue them in the detail read).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The previous page's `x-next-cursor`.
    #[param(pattern = r"^[0-9a-fA-F]{32}$")]
    cursor: Option<String>,
}

/// `GET /executed_obs_units?obs_unit_id=N[&limit=L][&cursor=C]`.
#[utoipa::path(get, path = "/executed_obs_units", tag = "reads",
    summary = "A page of the executed obs units of an obs unit",
    description = "Each with the first 10 of its packages and of its files (their \
        `_next_cursor`s continue them in `GET /executed_obs_units/{id}`). Also at \
        `/executed_obs_units/`.",
    params(ListQuery),
    responses(
        (status = 200, description = "A JSON array, in id order", body = Vec<Record>,
            headers(("x-next-cursor" = String, description = "The next page's cursor; absent on the last page"),
                ("x-opsdb-replica" = String, description = "`unavailable` when the list comes from the buffer alone"))),
        (status = 422, description = "`invalid_query`: `obs_unit_id` missing or not an integer, a bad `limit` or `cursor`", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn executed_obs_units(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| invalid_query(e, "obs_unit_id"))?;
    let obs_unit_id = positive(query.obs_unit_id, "obs_unit_id")?;
    let page = paging::page(query.limit.as_deref(), query.cursor.as_deref(), "cursor")?;
    by_obs_unit(&state, obs_unit_id, page).await
}

/// Obs unit ids are positive (as writes check): another integer names nothing, and is
/// refused rather than answered with an empty list.
fn positive(obs_unit_id: i64, field: &str) -> Result<i64, ApiError> {
    if obs_unit_id > 0 {
        return Ok(obs_unit_id);
    }
    let (code, message) = if field == "id" {
        ("invalid_id", "id must be a UUID or a positive obs unit id")
    } else {
        ("invalid_query", "obs_unit_id must be a positive integer")
    };
    Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field))
}

/// One page of the executed obs units of an obs unit, each with the first page of its
/// nested lists (at most `overlay::NESTED_LIMIT` each, with their `_next_cursor`s for the detail
/// read); the next page's cursor in `x-next-cursor`. The nested lists of the whole page
/// are read together: a bounded number of queries whatever the page's size.
async fn by_obs_unit(
    state: &AppState,
    obs_unit_id: i64,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let mut conn = redis(state).await?;
    let key = IndexValue::Int(obs_unit_id);
    let listed = state
        .reads
        .records_where(&mut conn, Table::ExecutedObsUnit, "obs_unit_id", key, page)
        .await?;
    let mut replica_answered = listed.source_answered;
    let mut units = listed.records;
    let ids: Vec<Uuid> = units
        .iter()
        .filter_map(|eou| eou["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .collect();
    let nested = PageRequest::nested();
    for (name, table) in [
        ("raw_data_packages", Table::RawDataPackage),
        ("raw_data_files", Table::RawDataFile),
    ] {
        let lists = state
            .reads
            .records_where_each(&mut conn, table, "executed_obs_unit_id", &ids, nested)
            .await?;
        let mut lists = ids
            .iter()
            .zip(lists)
            .collect::<std::collections::HashMap<_, _>>();
        for eou in &mut units {
            let id = eou["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
            let Some(list) = id.and_then(|id| lists.remove(&id)) else {
                continue;
            };
            replica_answered &= list.source_answered;
            eou[name] = json!(list.records);
            eou[format!("{name}_next_cursor")] = paging::cursor_value(list.next);
        }
    }
    let mut response = answer(json!(units), replica_answered);
    if let Some(next) = listed.next {
        if let Ok(value) = HeaderValue::from_str(&paging::cursor_text(next)) {
            response
                .headers_mut()
                .insert(paging::NEXT_CURSOR_HEADER, value);
        }
    }
    Ok(response)
}

/// A raw data file
#[utoipa::path(get, path = "/raw_data_files/{id}", tag = "reads",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "The record", body = Record),
        (status = 404, description = "`not_found`: no such record", body = ErrorBody),
        (status = 422, description = "`invalid_id`: not a UUID", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`, `replica_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
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

/// `GET /raw_data_package/{id}[?limit=L&cursor=C]`: with a page of its files.
#[utoipa::path(get, path = "/raw_data_package/{id}", tag = "reads",
    summary = "A raw data package, with a page of its files",
    params(("id" = Uuid, Path),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Files per page, 1 to 1000 (default 100)"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9a-fA-F]{32}$", description = "The previous answer's `raw_data_files_next_cursor`")),
    responses(
        (status = 200, description = "The record with `raw_data_files` and `raw_data_files_next_cursor`", body = Record,
            headers(("x-opsdb-replica" = String, description = "`unavailable` when the replica did not answer"))),
        (status = 404, description = "`not_found`: no such record", body = ErrorBody),
        (status = 422, description = "`invalid_id`, `invalid_query` (naming `limit` or `cursor`)", body = ErrorBody),
        (status = 503, description = "`redis_unavailable`, `replica_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn raw_data_package(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| invalid_query(e, "query"))?;
    let id = ops::parse_id(&id)?;
    let page = query.page("cursor")?;
    let mut conn = redis(&state).await?;
    let mut package = state
        .reads
        .record(&mut conn, Table::RawDataPackage, id)
        .await?;
    let files = (Table::RawDataFile, "raw_data_package_id", id);
    let replica_answered = nest(
        &state,
        &mut conn,
        &mut package,
        "raw_data_files",
        files,
        page,
    )
    .await?;
    Ok(answer(package, replica_answered))
}
