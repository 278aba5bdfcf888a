//! The TCP facade: newline-delimited JSON, one request per line, one reply line per
//! request, in order. Same operations, payloads, status codes and errors as HTTP.
//!
//! Request:  `{"op": "executed_obs_units.start", "token": "...", "request_id": 7,
//!             "idempotency_key": "...", "id": "<uuid, for finish/finalize>", "body": {...}}`
//! Reply:    `{"request_id": 7, "status": 201, "body": {...}}`
//!       or  `{"request_id": 7, "status": 422, "error": {"code", "message", "field"}}`
//!
//! A bad line gets an error line and the connection stays usable; a line longer than
//! `tcp.max_line_bytes` (or one that is not UTF-8) gets an error line and the connection
//! is closed, since the stream can no longer be trusted to be in step.

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use axum::http::StatusCode;

use crate::config::Scope;
use crate::http::AppState;
use crate::operations::{self, OperationSpec, OPERATIONS};

use crate::ops::{self, ApiError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    op: String,
    token: Option<String>,
    request_id: Option<Value>,
    idempotency_key: Option<String>,
    id: Option<String>,
    body: Option<Box<RawValue>>,
}

pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let state = state.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tracing::debug!(%peer, "tcp client connected");
                    connection(stream, state, stop).await;
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
}

async fn connection(stream: TcpStream, state: AppState, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let codec = LinesCodec::new_with_max_length(state.config.tcp.max_line_bytes);
    let mut framed = Framed::new(stream, codec);
    loop {
        let line = tokio::select! {
            line = framed.next() => line,
            () = stop.cancelled() => return,
        };
        let (reply, close) = match line {
            None => return,
            Some(Ok(line)) if line.trim().is_empty() => continue,
            Some(Ok(line)) => (handle(&state, &line).await, false),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                let err = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "line_too_long",
                    format!(
                        "a request line may be at most {} bytes; closing the connection",
                        state.config.tcp.max_line_bytes
                    ),
                );
                (error_reply(None, &err), true)
            }
            Some(Err(LinesCodecError::Io(err)))
                if err.kind() == std::io::ErrorKind::InvalidData =>
            {
                let err = ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_line",
                    "the line is not UTF-8; closing the connection",
                );
                (error_reply(None, &err), true)
            }
            Some(Err(_)) => return,
        };
        if framed.send(reply.to_string()).await.is_err() {
            return;
        }
        if close {
            return close_gracefully(framed.into_inner()).await;
        }
    }
}

/// Closes after an error line so that the client reads it: closing a socket with unread
/// input sends a reset, which can destroy the reply in flight. So: send FIN, then discard
/// what the client still sends, for a moment.
async fn close_gracefully(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

fn error_reply(request_id: Option<Value>, err: &ApiError) -> Value {
    let mut reply = err.body();
    reply["request_id"] = request_id.unwrap_or(Value::Null);
    reply["status"] = json!(err.status.as_u16());
    if let Some(secs) = err.retry_after {
        reply["retry_after"] = json!(secs);
    }
    reply
}

async fn handle(state: &AppState, line: &str) -> Value {
    let envelope: Envelope = match serde_json::from_str(line) {
        Ok(envelope) => envelope,
        Err(_) => {
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
            return error_reply(request_id, &err);
        }
    };
    let request_id = envelope.request_id.clone();
    match write(state, envelope).await {
        Ok(value) => {
            let mut value = value;
            value["request_id"] = request_id.unwrap_or(Value::Null);
            value
        }
        Err(err) => error_reply(request_id, &err),
    }
}

async fn write(state: &AppState, envelope: Envelope) -> Result<Value, ApiError> {
    state
        .tokens
        .check(envelope.token.as_deref(), Scope::Write)?;
    let spec = operations::by_name(&envelope.op).ok_or_else(|| {
        let known: Vec<_> = OPERATIONS.iter().map(OperationSpec::name).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_op",
            format!("unknown op {:?}; known: {}", envelope.op, known.join(", ")),
        )
        .with_field("op")
    })?;
    let body = envelope.body.as_deref().map_or("", RawValue::get);
    let key = envelope.idempotency_key.as_deref().map(str::as_bytes);
    let (status, ack) = ops::write(
        &state.tree,
        state.write_timeout,
        spec.kind,
        envelope.id.as_deref(),
        body.as_bytes(),
        key,
    )
    .await?;
    Ok(json!({ "status": status.as_u16(), "body": ack.body }))
}
