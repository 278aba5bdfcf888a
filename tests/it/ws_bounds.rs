//! `GET /ws/events` bounded: a cap of its own, a small inbound message size, pings with an
//! idle timeout, the token checked again while the client is connected, and a start refused
//! when the descriptors do not cover the caps.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use ops_db_service::token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{eventually, TestApp};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn try_connect(app: &TestApp, token: &str) -> Result<Ws, tungstenite::Error> {
    let url = format!("{}/ws/events", app.http.replacen("http", "ws", 1));
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// The close frame the service ends `ws` with (other messages skipped), within `within`.
async fn close_of(ws: &mut Ws, within: Duration) -> Option<(CloseCode, String)> {
    let read = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| (f.code, f.reason.to_string()));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_clients_over_events_max_clients_get_503_and_a_freed_slot_is_reused() {
    let app = TestApp::spawn_with(|c| c.events.max_clients = 2).await;
    let first = try_connect(&app, &app.token).await.expect("first");
    let _second = try_connect(&app, &app.token).await.expect("second");
    match try_connect(&app, &app.token).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("too_many_clients"), "{body}");
        }
        other => panic!("the third client must be refused: {:?}", other.map(|_| ())),
    }
    drop(first);
    eventually("the freed slot", Duration::from_secs(5), || async {
        try_connect(&app, &app.token).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_kib_inbound_message_closes_the_socket_with_1009() {
    let app = TestApp::spawn().await;
    let mut ws = try_connect(&app, &app.token).await.expect("connects");
    let big = "x".repeat(64 * 1024);
    ws.send(Message::Text(big.into())).await.expect("sent");
    let (code, reason) = close_of(&mut ws, Duration::from_secs(10))
        .await
        .expect("a close frame");
    assert_eq!(code, CloseCode::Size, "{reason}");
}

/// A websocket handshake by hand, then never a byte more: the client answers no ping.
async fn silent_client(app: &TestApp) -> TcpStream {
    let addr = app.http.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws/events HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
         authorization: Bearer {}\r\n\r\n",
        app.token
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    stream
}

/// The frames (opcode, payload) the server sent after its 101 head, until it closed the
/// connection; `None` if it did not within `within`.
async fn frames_until_closed(
    stream: &mut TcpStream,
    within: Duration,
) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut bytes = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut bytes))
        .await
        .ok()?
        .ok()?;
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    assert!(
        bytes.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    let mut rest = &bytes[head_end..];
    let mut frames = Vec::new();
    while rest.len() >= 2 {
        let opcode = rest[0] & 0x0f;
        let (len, skip) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((opcode, rest[skip..skip + len].to_vec()));
        rest = &rest[skip + len..];
    }
    Some(frames)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_answers_no_ping_is_closed_with_4002_and_one_that_does_stays() {
    let app = TestApp::spawn_with(|c| {
        c.events.ping_interval = Duration::from_millis(100);
        c.events.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut answering = try_connect(&app, &app.token).await.expect("connects");
    // Reads all along (tungstenite answers each ping as it reads) until the service closes.
    let answering = tokio::spawn(async move {
        while let Some(Ok(message)) = answering.next().await {
            if let Message::Close(frame) = message {
                return frame;
            }
        }
        None
    });
    let started = Instant::now();
    let mut silent = silent_client(&app).await;
    let frames = frames_until_closed(&mut silent, Duration::from_secs(10))
        .await
        .expect("the service closes a silent client");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "not before its idle timeout"
    );
    assert!(
        frames.iter().any(|(op, _)| *op == 0x9),
        "it was pinged: {frames:?}"
    );
    let (_, close) = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a close frame");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4002);
    // The client that answers, connected before the silent one, is still there past its
    // idle timeout.
    assert!(
        !answering.is_finished(),
        "closed: {:?}",
        answering.await.expect("the reader")
    );
    answering.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_from_the_tokens_file_closes_its_websocket_with_4001() {
    let dir = crate::helpers::tempdir::Dir::new();
    let path = dir.0.join("tokens.toml");
    let (kept, revoked) = (token::generate(), token::generate());
    let line = |secrets: &[(&str, &str)]| {
        let rows: Vec<String> = secrets
            .iter()
            .map(|(name, secret)| {
                format!(
                    "{{ name = \"{name}\", sha256 = \"{}\", scopes = [\"read\"] }}",
                    token::hash(secret)
                )
            })
            .collect();
        format!("tokens = [{}]\n", rows.join(", "))
    };
    std::fs::write(&path, line(&[("kept", &kept), ("revoked", &revoked)])).expect("write");
    let app = TestApp::spawn_with(|c| {
        c.auth.tokens_file = Some(path.clone());
        c.auth.cache_ttl = Duration::from_millis(200);
    })
    .await;
    let mut doomed = try_connect(&app, &revoked).await.expect("connects");
    let mut staying = try_connect(&app, &kept).await.expect("connects");
    std::fs::write(&path, line(&[("kept", &kept)])).expect("rewrite");
    let (code, reason) = close_of(&mut doomed, Duration::from_secs(10))
        .await
        .expect("a close frame");
    assert_eq!(code, CloseCode::from(4001), "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    staying
        .send(Message::Ping(Vec::new().into()))
        .await
        .expect("the other token's client stays");
    let refused = try_connect(&app, &revoked).await;
    assert!(
        matches!(refused, Err(tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{:?}",
        refused.map(|_| ())
    );
}

#[tokio::test]
async fn the_service_refuses_to_start_when_its_descriptors_do_not_cover_its_caps() {
    let mut config = ops_db_service::config::Config::defaults("fd");
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.tcp.listen = ([127, 0, 0, 1], 0).into();
    config.events.max_clients = 100_000_000;
    config.validate().expect("config");
    match ops_db_service::startup::Application::build(config).await {
        Ok(_) => panic!("100,000,000 websocket clients fit no RLIMIT_NOFILE here"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("events.max_clients (100000000)"), "{e}");
            assert!(e.contains("RLIMIT_NOFILE"), "{e}");
        }
    }
}
