//! How a TCP connection ends when the service ends it: an error line, then a FIN, then a
//! moment to read what the client still sends, so that the line is not destroyed by a
//! reset; and at the stop, every line already received answered `503 shutting_down`.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LinesCodec};

use axum::http::StatusCode;

use super::error_reply;
use crate::ops::{self, ApiError};

/// One error line, then close: the client learns why rather than seeing a reset.
pub(super) async fn refuse(stream: TcpStream, message: String) {
    use tokio::io::AsyncWriteExt;
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        message,
    );
    err.retry_after = Some(ops::RETRY_AFTER_UNAVAILABLE);
    // No line was read: nothing was stored.
    err.stored = Some(ops::Stored::No);
    let mut stream = stream;
    let line = format!("{}\n", error_reply(None, &err));
    if stream.write_all(line.as_bytes()).await.is_ok() {
        close_gracefully(stream).await;
    }
}

/// Most lines received before the stop that are answered `503 shutting_down`; a client
/// that sent more learns of the stop from the connection's end.
const MAX_REFUSED_AT_STOP: usize = 1024;

/// At the stop, between requests: answers each line already received (none is started:
/// each gets a `503 shutting_down`, nothing stored), then closes with a FIN. A client that
/// pipelines thus gets an answer for every line the service read, and the replies already
/// sent are never destroyed by a reset.
pub(super) async fn refuse_received(mut framed: Framed<TcpStream, LinesCodec>) {
    use futures::FutureExt as _;
    for _ in 0..MAX_REFUSED_AT_STOP {
        // Only what has arrived: the stop waits for no client.
        let Some(Some(Ok(line))) = framed.next().now_or_never() else {
            break;
        };
        if line.trim().is_empty() {
            continue;
        }
        let request_id = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v.get("request_id").cloned());
        let reply = error_reply(request_id, &shutting_down());
        if framed.send(reply.to_string()).await.is_err() {
            return;
        }
    }
    close_gracefully(framed.into_inner()).await;
}

/// The answer to a request received as the service stops.
fn shutting_down() -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the service is stopping and did not start this request: nothing was stored; retry \
         (with the same idempotency key) once it is back",
    );
    err.retry_after = Some(ops::RETRY_AFTER_UNAVAILABLE);
    err.stored = Some(ops::Stored::No);
    err
}

/// Closes after an error line so that the client reads it: closing a socket with unread
/// input sends a reset, which can destroy the reply in flight. So: send FIN, then discard
/// what the client still sends, for a moment.
pub(super) async fn close_gracefully(mut stream: TcpStream) {
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
