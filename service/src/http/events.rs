//! `GET /ws/events`: the site's events over a websocket.
//!
//! The token comes in the `Authorization` header, or (browsers cannot set headers on a
//! websocket) as the subprotocol `opsdb.bearer.<token>` next to `opsdb.events`, which the
//! server then selects. `?since=SEQ` first replays the events after `SEQ` from the capped
//! stream, then goes live: the live receiver is subscribed before the replay is read, and
//! live events at or below the last one sent are skipped, so there is no gap and no
//! duplicate. `?types=tx.dead,actor.*` filters by name or prefix.
//!
//! A client more than `events.client_buffer` events behind is closed with code 4000 and a
//! reason naming the last sequence number it got; when the notifier restarts, its clients
//! are closed with 1012 the same way. Either way it reconnects with `since`.
//!
//! Bounds: at most `events.max_clients` clients at once (a websocket leaves the HTTP
//! connection cap at its upgrade; one more gets `503 too_many_clients`, and the service
//! refuses to start unless its descriptors cover them: `startup.rs`). A client sends
//! nothing but pongs, pings and a close: a message over [`MAX_INBOUND`] bytes closes it
//! with 1009. It is pinged every `events.ping_interval` and closed with 4002 once nothing
//! arrived from it for `events.idle_timeout`. Its token is checked again every
//! `auth.cache_ttl` (when the token sources are re-read): revoked, expired or without the
//! read scope, the client is closed with 4001.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ops_db_actors::events::{matches, Event};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::config::Scope;
use crate::ops::{ApiError, ErrorBody};

/// The subprotocol a browser client asks for (with its token as a second one).
const PROTOCOL: &str = "opsdb.events";
const BEARER_PROTOCOL: &str = "opsdb.bearer.";

/// How long a new client waits for a notifier that is (re)starting before it gets a 503.
const NOTIFIER_WAIT: Duration = Duration::from_secs(3);

/// Events read from the capped stream per `XRANGE` while replaying.
const REPLAY_PAGE: usize = 500;

/// A send that takes longer (the client stopped reading and its socket is full) ends the
/// connection without a close frame: it could not be sent either.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code for a client that fell too far behind (application range 4000-4999).
const TOO_SLOW: u16 = 4000;
/// Close code "service restart" (RFC 6455 registry): the notifier restarted.
const RESTARTING: u16 = 1012;
/// Close code for a client whose token was revoked, expired or lost the read scope.
const TOKEN_REVOKED: u16 = 4001;
/// Close code for a client from which nothing arrived for `events.idle_timeout`.
const IDLE: u16 = 4002;
/// Close code "message too big" (RFC 6455).
const TOO_BIG: u16 = 1009;
/// Close code "protocol error" (RFC 6455).
const PROTOCOL_ERROR: u16 = 1002;

/// The largest message (and frame) a client may send: it sends nothing but pings, pongs
/// and a close.
pub const MAX_INBOUND: usize = 4096;

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", message).with_field(field)
}

/// The token: `Authorization: Bearer …`, else the `opsdb.bearer.…` subprotocol.
fn token(headers: &HeaderMap) -> (Option<String>, bool) {
    if let Some(token) = super::auth::bearer_header(headers) {
        return (Some(token.to_owned()), false);
    }
    let protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL).map(str::to_owned));
    let by_protocol = protocol.is_some();
    (protocol, by_protocol)
}

#[utoipa::path(get, path = "/ws/events", tag = "events",
    summary = "The site's events, over a websocket",
    description = "One JSON text message per event, each with a strictly increasing `seq`, its \
        `type` and `at` (unix ms); the types are listed in the README. The token comes in the \
        `Authorization` header or, from a browser, as the subprotocol `opsdb.bearer.<token>` \
        next to `opsdb.events`. A client too far behind is closed with 4000, and all clients \
        with 1012 when the notifier restarts; both close reasons end in \
        `reconnect with since=N`. A client sends nothing but pongs, pings and a close: a \
        message over 4096 bytes closes it with 1009; one silent for `events.idle_timeout` \
        (it is pinged every `events.ping_interval`) is closed with 4002; one whose token is \
        revoked, expires or loses the read scope is closed with 4001 at its next check (every `auth.cache_ttl`, after the token sources are re-read).",
    params(
        ("since" = Option<u64>, Query, description = "First replay every kept event after this sequence number, then go live"),
        ("types" = Option<String>, Query, description = "Only these types: comma-separated names, or prefixes ending in `*` (`tx.dead,actor.*`)"),
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`opsdb.events, opsdb.bearer.<token>` (browsers)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the websocket"),
        (status = 400, description = "`not_a_websocket`: no websocket upgrade", body = ErrorBody),
        (status = 422, description = "`invalid_query` naming `since`", body = ErrorBody),
        (status = 503, description = "`notifier_unavailable`, `redis_unavailable`, `too_many_clients` (`events.max_clients`)", body = ErrorBody, headers(("Retry-After" = u64))),
    ))]
pub async fn ws_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (presented, by_protocol) = token(&headers);
    state.tokens.check(presented.as_deref(), Scope::Read)?;
    let presented = presented.unwrap_or_default();
    let Query(query) = query.map_err(|e| invalid("query", &e.body_text()))?;
    let since = query
        .get("since")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| invalid("since", "since must be an event sequence number"))
        })
        .transpose()?;
    let types: Vec<String> = query
        .get("types")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_websocket",
            "GET /ws/events takes a websocket upgrade",
        )
    })?;
    let Ok(permit) = std::sync::Arc::clone(&state.events_clients).try_acquire_owned() else {
        return Ok(too_many_clients(state.config.events.max_clients));
    };
    // At startup and while the notifier restarts there is no broadcast for a moment:
    // wait for it a little rather than refuse at once.
    let mut live = state.tree.hub.subscribe();
    let wait_until = tokio::time::Instant::now() + NOTIFIER_WAIT;
    while live.is_none() && tokio::time::Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        live = state.tree.hub.subscribe();
    }
    let Some(live) = live else {
        return Ok(notifier_down());
    };
    let conn = super::redis(&state).await?;
    let stream = state.probe.keys().events();
    let upgrade = upgrade
        .max_message_size(MAX_INBOUND)
        .max_frame_size(MAX_INBOUND);
    let upgrade = if by_protocol {
        upgrade.protocols([PROTOCOL])
    } else {
        upgrade
    };
    let watch = Watch {
        tokens: std::sync::Arc::clone(&state.tokens),
        token: presented,
        ping_interval: state.config.events.ping_interval,
        idle_timeout: state.config.events.idle_timeout,
    };
    Ok(upgrade.on_upgrade(move |socket| async move {
        // Held for the client's life: its slot among `events.max_clients`.
        let _permit = permit;
        let client = Client {
            socket,
            types,
            last: since.unwrap_or(0),
        };
        client.run(live, conn, stream, since, watch).await;
    }))
}

fn too_many_clients(max: usize) -> Response {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_clients",
        format!(
            "at most {max} websocket clients are served at once (events.max_clients); retry later"
        ),
    );
    err.retry_after = Some(crate::ops::RETRY_AFTER_UNAVAILABLE);
    err.into_response()
}

/// What a live client is watched for besides events: its liveness and its token.
struct Watch {
    tokens: std::sync::Arc<super::Tokens>,
    token: String,
    ping_interval: Duration,
    idle_timeout: Duration,
}

impl Watch {
    /// Why the client's token no longer opens `/ws/events`, if it does not. A token source
    /// that cannot be placed yet (503) is not a reason.
    fn revoked(&self) -> Option<&'static str> {
        match self.tokens.check(Some(&self.token), Scope::Read) {
            Err(err) if err.status == StatusCode::UNAUTHORIZED => {
                Some("token revoked or expired; reconnect with a valid token")
            }
            Err(err) if err.status == StatusCode::FORBIDDEN => {
                Some("token no longer has the read scope")
            }
            _ => None,
        }
    }
}

/// The close code for a receive that failed: 1009 for a message over [`MAX_INBOUND`].
fn receive_error_code(err: axum::Error) -> (u16, &'static str) {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => (
            TOO_BIG,
            "a client sends nothing but pings, pongs and a close (at most 4096 bytes)",
        ),
        _ => (PROTOCOL_ERROR, "protocol error"),
    }
}

fn notifier_down() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "notifier_unavailable",
        "the notifier is restarting; try again (with since= to resume)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

struct Client {
    socket: WebSocket,
    types: Vec<String>,
    /// The newest sequence number sent (or skipped by the filter).
    last: u64,
}

impl Client {
    async fn run(
        mut self,
        mut live: tokio::sync::broadcast::Receiver<Event>,
        mut conn: MultiplexedConnection,
        stream: String,
        since: Option<u64>,
        watch: Watch,
    ) {
        if since.is_some() && self.replay(&mut conn, &stream).await.is_err() {
            return;
        }
        drop(conn);
        let start = tokio::time::Instant::now();
        let mut ping = tokio::time::interval_at(start + watch.ping_interval, watch.ping_interval);
        let ttl = watch.tokens.cache_ttl;
        let mut recheck = tokio::time::interval_at(start + ttl, ttl);
        // Reset by every frame the client sends.
        let idle = tokio::time::sleep(watch.idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) => {
                        if event.seq <= self.last {
                            continue;
                        }
                        if self.send(&event).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let reason = format!(
                            "too slow: {missed} events missed; reconnect with since={}",
                            self.last
                        );
                        self.close(TOO_SLOW, reason).await;
                        return;
                    }
                    Err(RecvError::Closed) => {
                        let reason = format!("notifier restarted; reconnect with since={}", self.last);
                        self.close(RESTARTING, reason).await;
                        return;
                    }
                },
                incoming = self.socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(err)) => {
                        let (code, reason) = receive_error_code(err);
                        self.close(code, reason.to_owned()).await;
                        return;
                    }
                    Some(Ok(_)) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + watch.idle_timeout);
                    }
                },
                _ = ping.tick() => {
                    let ping = self.socket.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(SEND_TIMEOUT, ping).await, Ok(Ok(()))) {
                        return;
                    }
                }
                () = &mut idle => {
                    let reason = format!(
                        "nothing received for {}; reconnect with since={}",
                        humantime::format_duration(watch.idle_timeout),
                        self.last
                    );
                    self.close(IDLE, reason).await;
                    return;
                }
                _ = recheck.tick() => {
                    if let Some(reason) = watch.revoked() {
                        self.close(TOKEN_REVOKED, reason.to_owned()).await;
                        return;
                    }
                }
            }
        }
    }

    async fn send(&mut self, event: &Event) -> Result<(), axum::Error> {
        self.last = self.last.max(event.seq);
        if !matches(&self.types, &event.kind) {
            return Ok(());
        }
        let text: &str = &event.json;
        self.send_text(text.into()).await
    }

    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), axum::Error> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text))).await {
            Ok(sent) => sent,
            Err(_) => Err(axum::Error::new("websocket send timed out")),
        }
    }

    /// Sends the events after `self.last` from the capped stream, page by page. If the
    /// stream no longer holds the next one (trimmed), says so first.
    async fn replay(&mut self, conn: &mut MultiplexedConnection, stream: &str) -> Result<(), ()> {
        let mut first = true;
        loop {
            let reply: StreamRangeReply = match redis::cmd("XRANGE")
                .arg(stream)
                .arg(format!("({}-0", self.last))
                .arg("+")
                .arg("COUNT")
                .arg(REPLAY_PAGE)
                .query_async(conn)
                .await
            {
                Ok(reply) => reply,
                Err(e) => {
                    let reason = format!("redis: {e}; reconnect with since={}", self.last);
                    self.close(RESTARTING, reason).await;
                    return Err(());
                }
            };
            let count = reply.ids.len();
            for entry in reply.ids {
                let Some(event) = entry.get::<String>("e").as_deref().and_then(Event::parse) else {
                    continue;
                };
                if first && event.seq > self.last + 1 {
                    let lost = serde_json::json!({
                        "type": "events.lost",
                        "from": self.last + 1,
                        "to": event.seq - 1,
                    });
                    self.send_text(lost.to_string().into())
                        .await
                        .map_err(|_| ())?;
                }
                first = false;
                self.send(&event).await.map_err(|_| ())?;
            }
            if count < REPLAY_PAGE {
                return Ok(());
            }
        }
    }

    async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let close = self.socket.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(SEND_TIMEOUT, close).await;
    }
}
