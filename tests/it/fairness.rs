//! Connection fairness on both facades: one address cannot take every slot, strangers hold
//! a bounded share of TCP's slots and only until their deadline, and a flood of idle
//! strangers does not stop authenticated clients' writes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{eventually, TestApp};
use crate::http_bounds::read_answer;

/// The flood's address, and another local one (any of 127.0.0.0/8 reaches loopback).
const FLOODER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::from(ip), 0))
        .expect("bind a local address");
    socket.connect(to).await.expect("connect")
}

/// A TCP facade client: one request line, one reply line.
struct Line {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Line {
    async fn connect(ip: [u8; 4], app: &TestApp) -> Self {
        let (r, w) = connect_from(ip, app.tcp).await.into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// The next line from the service; `None` once the connection is closed.
    async fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a JSON line")),
        }
    }

    async fn send(&mut self, request: &Value) -> Value {
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .await
            .expect("sent");
        self.read().await.expect("a reply line")
    }

    /// Connects and authenticates with `token`.
    async fn authenticated(ip: [u8; 4], app: &TestApp) -> Self {
        let mut line = Self::connect(ip, app).await;
        let reply = line.send(&json!({"op": "auth", "token": app.token})).await;
        assert_eq!(reply["status"], 200, "{reply}");
        line
    }

    async fn start(&mut self, request_id: u64) -> Value {
        self.send(
            &json!({"op": "executed_obs_units.start", "request_id": request_id,
                          "body": {"obs_unit_id": 1}}),
        )
        .await
    }
}

fn assert_too_many(reply: &Value) {
    assert_eq!(reply["status"], 503, "{reply}");
    assert_eq!(reply["error"]["code"], "too_many_connections", "{reply}");
    assert!(reply["retry_after"].as_u64().is_some(), "{reply}");
    assert_eq!(reply["error"]["stored"], false, "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_idle_strangers_from_one_address_does_not_stop_authenticated_writes() {
    // The defaults (256 connections, 64 per address, 64 strangers), a deadline longer than
    // the test so that the flood stays.
    let app = TestApp::spawn_with(|c| c.tcp.auth_timeout = Duration::from_secs(60)).await;
    let mut writer = Line::authenticated(FLOODER, &app).await;
    let mut acknowledged = 0;
    assert_eq!(writer.start(1).await["status"], 201);
    acknowledged += 1;

    // 220 strangers from the writer's own address, each sending a blank line; the refused
    // ones are counted as their refusal arrives, the served ones stay silent and open (the
    // deadline is 60 s).
    const FLOOD: usize = 220;
    let refused = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let mut stranger = Line::connect(FLOODER, &app).await;
        let _ = stranger.writer.write_all(b"\n").await;
        let refused = Arc::clone(&refused);
        flood.push(tokio::spawn(async move {
            // A served stranger hears nothing before its deadline; a refused one gets the
            // error line (or, while many refusals are being answered, only the close).
            if let Some(reply) = stranger.read().await {
                assert_too_many(&reply);
            }
            refused.fetch_add(1, Ordering::SeqCst);
        }));
    }
    // Half of the 64 strangers' slots per address: 32 served, the rest refused.
    eventually(
        "the flood beyond 32 refused",
        Duration::from_secs(20),
        || {
            let refused = refused.load(Ordering::SeqCst);
            async move { (refused == FLOOD - 32).then_some(()) }
        },
    )
    .await;

    // The authenticated connection writes on; a new client from another address connects,
    // authenticates and writes; HTTP writes go on.
    for n in 2..=6 {
        assert_eq!(writer.start(n).await["status"], 201, "the writer goes on");
        acknowledged += 1;
    }
    let mut other = Line::authenticated(OTHER, &app).await;
    assert_eq!(
        other.start(100).await["status"],
        201,
        "another address is served"
    );
    acknowledged += 1;
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    acknowledged += 1;
    assert_eq!(
        refused.load(Ordering::SeqCst),
        FLOOD - 32,
        "the 32 served strangers are still open, idle"
    );
    // Every acknowledged write is buffered, once.
    assert_eq!(app.buffered_count().await, acknowledged);
    for task in flood {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_address_cap_refuses_the_next_connection_on_both_facades() {
    let app = TestApp::spawn_with(|c| {
        c.tcp.max_connections_per_peer = 3;
        c.http.max_connections_per_peer = 3;
    })
    .await;
    // TCP: three authenticated connections from one address; the fourth is refused with
    // one error line and closed; another address is served.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Line::authenticated(FLOODER, &app).await);
    }
    let mut over = Line::connect(FLOODER, &app).await;
    let refusal = over.read().await.expect("one error line");
    assert_too_many(&refusal);
    let message = refusal["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("127.0.0.1"),
        "names the address: {message}"
    );
    assert!(over.read().await.is_none(), "and closed");
    let mut other = Line::authenticated(OTHER, &app).await;
    assert_eq!(other.start(1).await["status"], 201);
    assert_eq!(held[0].start(2).await["status"], 201, "the others go on");

    // HTTP: three keep-alive connections from one address; the fourth gets a 503 with
    // Retry-After; another address is served.
    let http: SocketAddr = app
        .http
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(FLOODER, http).await;
        assert!(get_live(&mut stream).await.starts_with("HTTP/1.1 200"));
        open.push(stream);
    }
    let mut over = connect_from(FLOODER, http).await;
    let answer = get_live(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    assert!(answer.contains("\"too_many_connections\""), "{answer}");
    let mut elsewhere = connect_from(OTHER, http).await;
    assert!(get_live(&mut elsewhere).await.starts_with("HTTP/1.1 200"));
    assert!(get_live(&mut open[0]).await.starts_with("HTTP/1.1 200"));
}

/// One `GET /health/live` on a raw keep-alive connection: the whole answer, head and body
/// (empty if the connection ended first).
async fn get_live(stream: &mut TcpStream) -> String {
    let request = "GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n";
    let _ = stream.write_all(request.as_bytes()).await;
    tokio::time::timeout(Duration::from_secs(10), read_answer(stream))
        .await
        .expect("an answer")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_is_closed_at_its_auth_deadline_even_while_sending_blank_lines() {
    let app = TestApp::spawn_with(|c| c.tcp.auth_timeout = Duration::from_millis(700)).await;
    let mut member = Line::authenticated(FLOODER, &app).await;
    let accepted = Instant::now();
    let stranger = Line::connect(FLOODER, &app).await;
    let Line {
        mut reader,
        mut writer,
    } = stranger;
    // Blank lines every 50 ms, which reset the idle timeout but not this deadline.
    let chatter = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        loop {
            every.tick().await;
            if writer.write_all(b"\n").await.is_err() {
                return;
            }
        }
    });
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("the service speaks before 10 s")
        .expect("a line");
    let elapsed = accepted.elapsed();
    let reply: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(reply["status"], 401, "{reply}");
    assert_eq!(reply["error"]["code"], "auth_timeout", "{reply}");
    assert!(
        elapsed >= Duration::from_millis(650),
        "not before the deadline: {elapsed:?}"
    );
    line.clear();
    let end = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "closed after the line: {end:?} {line}"
    );
    chatter.abort();
    // The authenticated connection, older than the deadline, is not affected.
    assert_eq!(member.start(1).await["status"], 201);
}
