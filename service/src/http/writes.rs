//! The write endpoints: one handler for every row of the operations table
//! ([`crate::operations::OPERATIONS`]): parse, ingest, answer (and maybe wait).

use axum::body::Bytes;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde_json::json;
use uuid::Uuid;

use axum::routing::{on, MethodRouter};
use ops_db_actors::domain::OperationKind;
use ops_db_actors::overlay::TxState;

use super::auth::Principal;
use super::AppState;
use crate::operations::OperationSpec;

use crate::ops::{self, ApiError};
use crate::submit::{submit, Received};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a write whose parent rows were found neither buffered nor on the read source.
pub const REFERENCE_WARNING: &str = "x-opsdb-reference-warning";

type Body = Result<Bytes, BytesRejection>;
type Id = Result<Path<String>, PathRejection>;
type Wait = Result<Query<WaitQuery>, QueryRejection>;

/// The longest a write may ask to wait for its transaction.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    Forwarded,
    Replicated,
}

/// `?wait=forwarded|replicated&timeout=5s`: answer once the transaction got there, or
/// `202` with its state when the timeout expires first.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Answer once the transaction got this far (the write is durable either way).
    wait: Option<WaitFor>,
    /// How long to wait, e.g. `5s` (the default), at most `60s`: whole seconds (`s`,
    /// without a leading zero) or milliseconds (`ms`, 1 to 4 digits).
    #[param(pattern = "^(([1-5]?[0-9]|60)s|[0-9]{1,4}ms)$")]
    timeout: Option<String>,
}

fn parse_wait(query: Wait) -> Result<Option<(WaitFor, Duration)>, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let timeout = match &query.timeout {
        Some(t) => parse_timeout(t).ok_or_else(|| {
            invalid(format!(
                "timeout: {t:?} is not whole seconds (`5s`) or milliseconds (`500ms`)"
            ))
            .with_field("timeout")
        })?,
        None => Duration::from_secs(5),
    };
    if timeout > MAX_WAIT {
        return Err(invalid(format!(
            "timeout: at most {}",
            humantime::format_duration(MAX_WAIT)
        ))
        .with_field("timeout"));
    }
    Ok(query.wait.map(|w| (w, timeout)))
}

/// `5s` or `500ms`, exactly as the document's pattern on `timeout` says: whole seconds
/// without a leading zero (0 to 60; two digits over 60 are refused later, as over the
/// bound), or 1 to 4 digits of milliseconds (so no overflow).
fn parse_timeout(text: &str) -> Option<Duration> {
    let digits = |d: &str, most: usize| {
        (1..=most).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(ms) = text.strip_suffix("ms") {
        return digits(ms, 4).then(|| ms.parse().ok().map(Duration::from_millis))?;
    }
    let secs = text.strip_suffix('s')?;
    if !digits(secs, 2) || (secs.len() == 2 && secs.starts_with('0')) {
        return None;
    }
    secs.parse().ok().map(Duration::from_secs)
}

/// Polls the transaction's lifecycle until it reaches `target` (or is dead) or `timeout`:
/// whether it got there, and the state last seen (`None`: none was). Never fails: the
/// write is acknowledged already, so a poll Redis does not answer ends the wait early,
/// and one that hangs ends at the timeout.
async fn wait_for(
    state: &AppState,
    tx: Uuid,
    target: WaitFor,
    timeout: Duration,
) -> (bool, Option<TxState>) {
    let mut last = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let polled = tokio::time::timeout_at(deadline, poll(state, tx, target, &mut last)).await;
    match polled {
        Ok(Ok(reached)) => (reached, last),
        Ok(Err(())) | Err(_) => (false, last),
    }
}

/// Polls until the target (or dead) is reached, noting each state seen in `last`; `Err`
/// (logged) when Redis does not answer.
async fn poll(
    state: &AppState,
    tx: Uuid,
    target: WaitFor,
    last: &mut Option<TxState>,
) -> Result<bool, ()> {
    let mut conn = super::redis(state).await.map_err(|_| ())?;
    loop {
        let current = match state.reads.state(&mut conn, tx).await {
            Ok(current) => current.unwrap_or(TxState::Replicated),
            Err(err) => {
                tracing::warn!(error = %err, %tx, "polling an acknowledged write's state failed");
                return Err(());
            }
        };
        *last = Some(current);
        match (target, current) {
            (_, TxState::Replicated) | (WaitFor::Forwarded, TxState::Forwarded) => return Ok(true),
            (_, TxState::Dead) => return Ok(true),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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

/// The token's owner, from the write scope's middleware.
type Client = Option<Extension<Arc<Principal>>>;

/// The write handler of `spec`'s route: one for every operation of the table.
pub fn route(spec: &'static OperationSpec) -> MethodRouter<AppState> {
    let filter = spec.method.filter();
    if spec.kind.needs_id() {
        on(
            filter,
            move |State(s): State<AppState>,
                  client: Client,
                  id: Id,
                  wait: Wait,
                  headers: HeaderMap,
                  body: Body| async move {
                handle(&s, client, spec, Some(id), wait, &headers, body).await
            },
        )
    } else {
        on(
            filter,
            move |State(s): State<AppState>,
                  client: Client,
                  wait: Wait,
                  headers: HeaderMap,
                  body: Body| async move {
                handle(&s, client, spec, None, wait, &headers, body).await
            },
        )
    }
}

async fn handle(
    state: &AppState,
    client: Client,
    spec: &'static OperationSpec,
    id: Option<Id>,
    wait: Wait,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // The write scope's middleware put the token's owner there; it always runs first.
    let Some(Extension(client)) = client else {
        return ApiError::unauthorized().into_response();
    };
    match submit_and_wait(state, &client, spec.kind, id, wait, headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn submit_and_wait(
    state: &AppState,
    client: &Principal,
    kind: OperationKind,
    id: Option<Id>,
    wait: Wait,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::media::json_body(headers)?;
    let body = body.map_err(body_error)?;
    let id = id
        .transpose()
        .map_err(|_| ops::invalid_id("(undecodable)"))?
        .map(|Path(id)| id);
    let wait = parse_wait(wait)?;
    let received = Received {
        kind,
        id: id.as_deref(),
        body: &body,
        idempotency_key: headers.get(IDEMPOTENCY_KEY).map(|v| v.as_bytes()),
        client: &client.name,
    };
    let (status, ack) = submit(&state.tree, state.write_timeout, received).await?;
    let warning = reference_warning(&ack.warnings);
    let mut answer = ack.body;
    let Some((target, timeout)) = wait else {
        return Ok((status, warning, Json(answer)).into_response());
    };
    let tx = answer["transaction_id"]
        .as_str()
        .and_then(|t| Uuid::parse_str(t).ok());
    let Some(tx) = tx else {
        return Ok((status, Json(answer)).into_response());
    };
    // The write is durable already; waiting only reports how far it got. A wait that
    // fails answers 202 with the acknowledgement and the state last seen, never a 503.
    let (reached, current) = wait_for(state, tx, target, timeout).await;
    answer["status"] = json!(current.unwrap_or(TxState::Buffered));
    let status = if reached {
        status
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, warning, Json(answer)).into_response())
}

/// `schema.references = warn`: the parents the write names that were found nowhere, as
/// the header `x-opsdb-reference-warning` (visible ASCII only; at most 2 KiB).
fn reference_warning(warnings: &[String]) -> Option<[(&'static str, String); 1]> {
    if warnings.is_empty() {
        return None;
    }
    let text: String = warnings
        .join("; ")
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(2048)
        .collect();
    Some([(REFERENCE_WARNING, text)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_read_exactly_as_the_document_states_it() {
        for (text, expected) in [
            ("0s", Some(Duration::ZERO)),
            ("5s", Some(Duration::from_secs(5))),
            ("59s", Some(Duration::from_secs(59))),
            ("60s", Some(Duration::from_secs(60))),
            ("0ms", Some(Duration::ZERO)),
            ("0500ms", Some(Duration::from_millis(500))),
            ("9999ms", Some(Duration::from_millis(9999))),
        ] {
            assert_eq!(parse_timeout(text), expected, "{text}");
        }
        // Outside the pattern (61s to 99s are refused later as over 60 s).
        for text in [
            "", "s", "ms", "05s", "00s", "100s", "10000ms", "+5s", "5", "5m", " 5s", "5 s",
        ] {
            assert_eq!(parse_timeout(text), None, "{text}");
        }
    }
}
