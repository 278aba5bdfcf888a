//! Serving the HTTP API with bounds: at most `http.max_connections` connections, and at
//! most `http.max_connections_per_peer` from one IP address (`crate::peers`: one client
//! cannot take every slot); one more gets a 503 `too_many_connections` JSON answer with
//! `Retry-After` and is closed, the others go on. A request's head must arrive
//! within `http.header_timeout` (which also bounds how long a keep-alive connection may
//! sit idle between requests: hyper starts that timer whenever it waits for a head), and
//! its body within `http.body_timeout` (the router's layer). A slow-loris client thus holds
//! one slot for at most `header_timeout`.
//!
//! hyper's own HTTP/1 connection builder instead of `axum::serve`, which exposes neither
//! the header timeout nor a connection cap.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Http;
use crate::ops::{ApiError, RETRY_AFTER_UNAVAILABLE};
use crate::peers::{Peers, Refusals};
use crate::shutdown;

/// Serves `router` on `listener` until `stop`; then stops accepting, lets the requests in
/// flight finish (each connection closes after its current answer) and returns once every
/// connection is gone or `grace` has passed (`crate::shutdown`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &Http,
    stop: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let peers = Peers::new(config.max_connections_per_peer);
    let refusals = Refusals::default();
    let service = TowerToHyperService::new(router);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: keep serving the clients we have.
                tracing::warn!(error = %err, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            let max = config.max_connections;
            tracing::warn!(%peer, max, "http connection refused: too many");
            let why = format!("at most {max} connections are served at once; retry later");
            refuse(&refusals, stream, why);
            continue;
        };
        let Some(peer_slot) = peers.try_acquire(peer.ip()) else {
            let max = peers.max();
            tracing::warn!(%peer, max, "http connection refused: too many from one address");
            let why = format!(
                "at most {max} connections are served at once from one address ({}); retry later",
                peer.ip()
            );
            refuse(&refusals, stream, why);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout);
        let connection = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .with_upgrades();
        let stop = stop.clone();
        tokio::spawn(async move {
            // Held for the connection's life: its slots among `max_connections` and its
            // address's. A websocket gives both back at its upgrade (`events.max_clients`).
            let _slots = (slot, peer_slot);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                ended = connection.as_mut() => return log_end(ended),
                () = stop.cancelled() => {}
            }
            // Finish the request in flight, take no more.
            connection.as_mut().graceful_shutdown();
            log_end(connection.await);
        });
    }
    // New connections are refused from here on, not left in the backlog.
    drop(listener);
    if !shutdown::connections_closed(&slots, config.max_connections, grace).await {
        tracing::warn!("http connections still open after the grace period");
    }
}

fn log_end(ended: Result<(), hyper::Error>) {
    if let Err(err) = ended {
        tracing::debug!(error = %err, "http connection ended");
    }
}

/// Answers a refused connection in a task of its own, or closes it at once when
/// [`crate::peers::MAX_REFUSING`] are being answered already.
fn refuse(refusals: &Refusals, stream: TcpStream, why: String) {
    if let Some(turn) = refusals.try_start() {
        tokio::spawn(async move {
            answer_refused(stream, why).await;
            drop(turn);
        });
    }
}

/// A 503 JSON answer, then close: the client learns why rather than seeing a reset.
async fn answer_refused(mut stream: TcpStream, message: String) {
    let mut err = ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        message,
    );
    err.retry_after = Some(RETRY_AFTER_UNAVAILABLE);
    // The request was never read: a write on it was not stored.
    err.stored = Some(crate::ops::Stored::No);
    let body = err.body().to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_UNAVAILABLE}\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
        // Give the client a moment to read before the socket goes (a close with unread
        // input would reset the answer away).
        let mut sink = [0u8; 4096];
        let drain = async {
            use tokio::io::AsyncReadExt;
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}
