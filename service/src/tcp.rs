//! The TCP facade: newline-delimited JSON, one request per line, one reply line per
//! request, in order. Same operations, payloads, status codes and errors as HTTP.
//!
//! Request:  `{"op": "executed_obs_units.start", "token": "...", "request_id": 7,
//!             "idempotency_key": "...", "id": "<uuid, for finish/finalize>", "body": {...}}`
//! Reply:    `{"request_id": 7, "status": 201, "body": {...}}`
//!       or  `{"request_id": 7, "status": 422, "error": {"code", "message", "field"}}`
//!
//! A line without `idempotency_key` uses its `request_id` (as text, if a valid key) as
//! one, scoped to the token like any key: a line resent after a lost reply gets the first
//! answer, not a second write ([`Envelope::idempotency_key`]).
//!
//! A bad line gets an error line and the connection stays usable; a line longer than
//! `tcp.max_line_bytes` (or one that is not UTF-8) gets an error line and the connection
//! is closed, since the stream can no longer be trusted to be in step.
//!
//! Bounds: until a connection has presented a valid token (an `{"op": "auth", "token"}`
//! line, or any request whose token passes), its lines may be at most
//! `tcp.unauthenticated_line_bytes`, so a stranger cannot make the service buffer a large
//! body; afterwards up to `tcp.max_line_bytes`, and a request without a token uses the
//! connection's. At most `tcp.max_connections` are served at once, at most
//! `tcp.max_connections_per_peer` from one IP address, and at most `tcp.max_unauthenticated`
//! without a valid token yet (half of them from one address: `admit`); one more gets a 503
//! `too_many_connections` line and is closed. One without a valid token `tcp.auth_timeout`
//! after its accept gets a 401 `auth_timeout` line and is closed, whatever it sent (blank
//! lines and refused tokens included); one silent for `tcp.idle_timeout` gets a 408 line and
//! is closed.
//!
//! On the stop, a connection answers the line it is handling, answers each line already
//! received behind it with `503 shutting_down` (not started, nothing stored) and closes with
//! a FIN; [`serve`] returns once every connection is gone or `shutdown.grace` has passed
//! (`crate::shutdown`).

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use axum::http::StatusCode;

use crate::config::{Scope, Tcp};
use crate::http::AppState;
use crate::operations::{self, OperationSpec, OPERATIONS};
use crate::peers::Refusals;
use crate::shutdown;

use crate::ops::{self, ApiError};
use crate::submit::{submit, Received};

mod admit;
mod close;
mod key;
use admit::{Admission, Held};
use close::{close_gracefully, refuse, refuse_received};
pub(crate) use key::LineKey;

/// One request line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Envelope {
    pub(crate) op: String,
    pub(crate) token: Option<String>,
    pub(crate) request_id: Option<Value>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) body: Option<Box<RawValue>>,
}

impl Envelope {
    /// The write's body as the operation decodes it (none: empty).
    pub(crate) fn body(&self) -> &[u8] {
        self.body.as_deref().map_or("", RawValue::get).as_bytes()
    }
}

/// The op that only authenticates the connection.
const AUTH_OP: &str = "auth";

/// Serves until `stop`; then stops accepting, answers what each connection has received
/// and closes it (see `crate::shutdown`), and returns once every connection is gone or
/// `shutdown.grace` has passed.
pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) {
    let admission = Admission::new(&state.config.tcp);
    let refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let held = match admission.admit(peer.ip()) {
                    Ok(held) => held,
                    Err(why) => {
                        tracing::warn!(%peer, why, "tcp connection refused");
                        // Answered unless too many are being answered already.
                        if let Some(turn) = refusals.try_start() {
                            tokio::spawn(async move {
                                refuse(stream, why).await;
                                drop(turn);
                            });
                        }
                        continue;
                    }
                };
                let state = state.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tracing::debug!(%peer, "tcp client connected");
                    // `held`: the connection's slots, for its life.
                    connection(stream, state, stop, held).await;
                    tracing::debug!(%peer, "tcp client gone");
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: keep serving the clients we have.
                tracing::warn!(error = %err, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    // New connections are refused from here on, not left in the backlog.
    drop(listener);
    let (slots, max) = (&admission.total, admission.max_total);
    if !shutdown::connections_closed(slots, max, state.config.shutdown.grace).await {
        tracing::warn!("tcp connections still open after the grace period");
    }
}

async fn connection(stream: TcpStream, state: AppState, stop: CancellationToken, mut held: Held) {
    let _ = stream.set_nodelay(true);
    let tcp = &state.config.tcp;
    let codec = LinesCodec::new_with_max_length(tcp.unauthenticated_line_bytes);
    let mut framed = Framed::new(stream, codec);
    // The valid token this connection presented, if any.
    let mut token: Option<String> = None;
    // From the accept: nothing the client sends extends it.
    let auth_deadline = Instant::now() + tcp.auth_timeout;
    loop {
        let idle_deadline = Instant::now() + tcp.idle_timeout;
        let deadline = match token {
            None => idle_deadline.min(auth_deadline),
            Some(_) => idle_deadline,
        };
        let line = tokio::select! {
            // Once stopping, no new request is started, even one already received.
            biased;
            () = stop.cancelled() => return refuse_received(framed).await,
            line = tokio::time::timeout_at(deadline, framed.next()) => line,
        };
        let (reply, close) = match line {
            Err(_) if token.is_none() && Instant::now() >= auth_deadline => {
                (error_reply(None, &auth_timeout(tcp.auth_timeout)), true)
            }
            Err(_idle) => (error_reply(None, &idle(tcp.idle_timeout)), true),
            Ok(None) => return,
            Ok(Some(Ok(line))) if line.trim().is_empty() => continue,
            Ok(Some(Ok(line))) => {
                let (reply, valid) = handle(&state, &line, token.as_deref()).await;
                if token.is_none() && valid.is_some() {
                    // Lines from now on may be as long as any request.
                    *framed.codec_mut() = LinesCodec::new_with_max_length(tcp.max_line_bytes);
                    token = valid;
                    held.authenticated();
                }
                (reply, false)
            }
            Ok(Some(Err(err))) => match line_error(tcp, err, token.is_some()) {
                Some(err) => (error_reply(None, &err), true),
                None => return,
            },
        };
        if framed.send(reply.to_string()).await.is_err() {
            return;
        }
        if close {
            return close_gracefully(framed.into_inner()).await;
        }
    }
}

/// The answer to a connection without a valid token at its deadline, before closing.
fn auth_timeout(after: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "auth_timeout",
        format!(
            "no valid token within {} of connecting; closing the connection (send {{\"op\": \"auth\", \"token\": ...}} first thing)",
            humantime::format_duration(after)
        ),
    )
}

fn idle(after: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "idle_timeout",
        format!(
            "nothing received for {}; closing the connection",
            humantime::format_duration(after)
        ),
    )
}

/// The answer to a line that cannot be read, before closing; `None` if the connection is
/// gone.
pub(crate) fn line_error(tcp: &Tcp, err: LinesCodecError, authenticated: bool) -> Option<ApiError> {
    match err {
        LinesCodecError::MaxLineLengthExceeded if authenticated => Some(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "line_too_long",
            format!(
                "a request line may be at most {} bytes; closing the connection",
                tcp.max_line_bytes
            ),
        )),
        LinesCodecError::MaxLineLengthExceeded => Some(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "line_too_long",
            format!(
                "before a valid token a line may be at most {} bytes (send {{\"op\": \"auth\", \"token\": ...}} first); closing the connection",
                tcp.unauthenticated_line_bytes
            ),
        )),
        LinesCodecError::Io(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            Some(not_utf8())
        }
        LinesCodecError::Io(_) => None,
    }
}

/// The answer to a line that is not UTF-8, before closing.
pub(crate) fn not_utf8() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_line",
        "the line is not UTF-8; closing the connection",
    )
}

pub(crate) fn error_reply(request_id: Option<Value>, err: &ApiError) -> Value {
    let mut reply = err.body();
    reply["request_id"] = request_id.unwrap_or(Value::Null);
    reply["status"] = json!(err.status.as_u16());
    if let Some(secs) = err.retry_after {
        reply["retry_after"] = json!(secs);
    }
    reply
}

/// A line read as a request, before its token is checked, or the error line that
/// answers it. Pure: no state, no I/O.
pub(crate) fn read_line(line: &str) -> Result<Envelope, Value> {
    serde_json::from_str(line).map_err(|_| {
        // Decode again through the shared path for a precise, field-naming error, and
        // echo the request id if the line has one.
        let request_id = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("request_id").cloned());
        let err = ops::decode::<Envelope>(line.as_bytes())
            .err()
            .unwrap_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    "the line is not a request",
                )
            });
        error_reply(request_id, &err)
    })
}

/// The row of a line's `op`; `None` for the op that only authenticates.
pub(crate) fn operation(op: &str) -> Result<Option<&'static OperationSpec>, ApiError> {
    if op == AUTH_OP {
        return Ok(None);
    }
    operations::by_name(op).map(Some).ok_or_else(|| {
        let known: Vec<_> = OPERATIONS.iter().map(OperationSpec::name).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_op",
            format!("unknown op {op:?}; known: {}", known.join(", ")),
        )
        .with_field("op")
    })
}

/// The reply to one line, and the token that passed its check, if one did.
async fn handle(
    state: &AppState,
    line: &str,
    connection_token: Option<&str>,
) -> (Value, Option<String>) {
    let mut envelope = match read_line(line) {
        Ok(envelope) => envelope,
        Err(reply) => return (reply, None),
    };
    let request_id = envelope.request_id.clone();
    if envelope.token.is_none() {
        envelope.token = connection_token.map(str::to_owned);
    }
    let client = match state.tokens.check(envelope.token.as_deref(), Scope::Write) {
        Ok(client) => client,
        Err(err) => return (error_reply(request_id, &err), None),
    };
    let valid = envelope.token.clone();
    let reply = match operation(&envelope.op) {
        Ok(None) => Ok(json!({ "status": 200, "body": {
            "authenticated": true,
            "max_line_bytes": state.config.tcp.max_line_bytes,
        }})),
        Ok(Some(spec)) => submit_line(state, &client.name, spec, &envelope).await,
        Err(err) => Err(err),
    };
    let reply = match reply {
        Ok(mut value) => {
            value["request_id"] = request_id.unwrap_or(Value::Null);
            value
        }
        Err(err) => error_reply(request_id, &err),
    };
    (reply, valid)
}

/// A write whose token has passed.
async fn submit_line(
    state: &AppState,
    client: &str,
    spec: &OperationSpec,
    envelope: &Envelope,
) -> Result<Value, ApiError> {
    let key = envelope.idempotency_key();
    let received = Received {
        kind: spec.kind,
        id: envelope.id.as_deref(),
        body: envelope.body(),
        idempotency_key: key.bytes(),
        client,
    };
    let (status, ack) = submit(&state.tree, state.write_timeout, received)
        .await
        .map_err(|err| match key {
            // The key the client reused is its request_id.
            LineKey::RequestId(_) if err.code == "idempotency_key_reused" => {
                err.with_field("request_id")
            }
            _ => err,
        })?;
    let mut reply = json!({ "status": status.as_u16(), "body": ack.body });
    if !ack.warnings.is_empty() {
        reply["warnings"] = json!(ack.warnings);
    }
    Ok(reply)
}
