//! `POST /admin/resend` (one bounded step of a resend: `ops_db_actors::resend::run`) and
//! `POST /admin/history/clear` (acknowledging a change of the primary's or the replica's
//! identity). Admin scope.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ops_db_actors::history::HistoryView;
use ops_db_actors::resend::run::{Resend, ResendError, ResendReport, Since};
use serde::Deserialize;
use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::ToSchema;

use super::AppState;
use crate::ops::{decode, ApiError, ErrorBody};

/// Most window entries one step may scan (`limit`'s bound and default).
pub const MAX_STEP: usize = 10_000;

/// The body of `POST /admin/resend`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    #[schema(schema_with = since)]
    pub since: String,
    /// The previous step's `next`: where this step goes on.
    #[schema(pattern = r"^[0-9]{1,19}-[0-9]{1,19}$")]
    pub after: Option<String>,
    /// Most window entries this step looks at, 1 to 10,000 (default 10,000).
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(default, deserialize_with = "ops_db_actors::domain::whole::opt_u64")]
    pub limit: Option<u64>,
    /// Count what would be sent, send nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `since`'s two forms, exactly as `Since` reads them.
fn since() -> Schema {
    let time = ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some(
            "An RFC 3339 time (`2026-12-05T14:00:00Z`): transactions forwarded at or after it",
        ));
    let stream_id = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[0-9]{1,19}-[0-9]{1,19}$"))
        .description(Some(
            "A stream id `<ms>-<seq>` (`GET /transactions/{id}`'s `stream_id`, \
             `1796479200000-0`): transactions buffered at or after it",
        ));
    OneOfBuilder::new()
        .description(Some(
            "Where the resend starts: an RFC 3339 time or a stream id, nothing else",
        ))
        .item(time)
        .item(stream_id)
        .into()
}

/// `POST /admin/resend`: one step of a resend (see `ops-db-api resend`, which steps
/// through the whole window).
#[utoipa::path(post, path = "/admin/resend", tag = "admin",
    summary = "Send again what the primary lost: one step through the resend window",
    description = "Looks up the window's transactions from `since` in the read source's \
        ledger and puts the ones it lacks back at the end of the stream (the primary's ledger \
        keeps it exactly-once). At most `limit` window entries per call: call again with \
        `after` = `next` until `next` is null. A step that sends something (not a dry run) \
        acknowledges the reported changes of identity (`/health` `history.changes`).",
    request_body = ResendRequest,
    responses(
        (status = 200, description = "The step's counts; `next` continues it", body = ResendReport),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 409, description = "`no_read_source`: no read source is configured, whose ledger a resend reads", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body declared as anything but JSON", body = ErrorBody),
        (status = 422, description = "`invalid_field` naming `since`, `after`, `limit` or `dry_run`; `missing_field` (`since`); `unknown_field`", body = ErrorBody),
        (status = 503, description = "`redis_unavailable` or `replica_unavailable` (the ledger is read there)", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn resend(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ResendReport>, ApiError> {
    super::media::json_body(&headers)?;
    let request: ResendRequest = decode(&body)?;
    let invalid = |field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    };
    let since: Since = request
        .since
        .parse()
        .map_err(|e: ops_db_actors::resend::run::BadSince| invalid("since", e.to_string()))?;
    if let Some(after) = request
        .after
        .as_deref()
        .filter(|a| ops_db_actors::resend::run::parse_stream_id(a).is_none())
    {
        return Err(invalid(
            "after",
            format!("{after:?} is not a `next` this service gave"),
        ));
    }
    let limit = match request.limit {
        None => MAX_STEP,
        Some(n) if (1..=MAX_STEP as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(invalid(
                "limit",
                format!("limit must be an integer from 1 to {MAX_STEP}"),
            ))
        }
    };
    let Some(source) = state.reads.pool() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_read_source",
            "a resend looks transactions up in the read source's ledger; none is configured",
        ));
    };
    let mut conn = super::redis(&state).await?;
    let keys = state.probe.keys();
    let mut step = Resend {
        redis: &mut conn,
        source,
        keys,
        schema: &state.config.schema.name,
        timeout: state.config.replica.connect_timeout,
    };
    let report = step
        .step(&since, request.after.as_deref(), limit, request.dry_run)
        .await
        .map_err(|e| match e {
            ResendError::Redis(e) => ApiError::redis_unavailable(&e),
            e @ (ResendError::Ledger(_) | ResendError::LedgerTimeout(_)) => {
                ApiError::replica_unavailable(&e)
            }
            e @ ResendError::BadAfter(_) => invalid("after", e.to_string()),
        })?;
    if !report.dry_run {
        tracing::warn!(
            since = %request.since,
            scanned = report.scanned,
            resent = report.resent,
            already_queued = report.already_queued,
            "resend step: transactions the ledger lacked are back in the stream"
        );
        state.tree.events.emit(
            "history.resent",
            serde_json::json!({ "since": request.since, "resent": report.resent, "scanned": report.scanned }),
        );
        state
            .tree
            .history
            .clear_changes(&mut conn, keys)
            .await
            .map_err(|e| ApiError::redis_unavailable(&e))?;
    }
    Ok(Json(report))
}

/// `POST /admin/history/clear`: the operator has handled a change of identity.
#[utoipa::path(post, path = "/admin/history/clear", tag = "admin",
    summary = "Acknowledge the reported changes of the primary's or the replica's identity",
    description = "Clears `/health` `history.changes` (a resend that sends does the same). \
        Ledger gaps are not cleared: they go when the ledger holds the transactions.",
    responses(
        (status = 200, description = "What `/health` shows as `history` now", body = HistoryView),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn clear_history(State(state): State<AppState>) -> Result<Json<HistoryView>, ApiError> {
    let mut conn = super::redis(&state).await?;
    state
        .tree
        .history
        .clear_changes(&mut conn, state.probe.keys())
        .await
        .map_err(|e| ApiError::redis_unavailable(&e))?;
    tracing::info!("changes of identity acknowledged by an operator");
    Ok(Json(state.tree.history.view()))
}
