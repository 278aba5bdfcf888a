//! The stop with a request provably in flight: Redis holds its write (`CLIENT PAUSE
//! WRITE`) while the stop begins. The request is answered with its acknowledgement after
//! the stop, lines received behind it are refused without being stored, new connections
//! are refused, and the connection ends with a FIN, not a reset.

use std::time::Duration;

use ops_db_service::config::Config;
use serde_json::Value;
use tokio::net::TcpStream;

use super::a_write_is_held;
use super::clients::{Facade, Op, Outcome, TcpConn, Write};
use crate::helpers::{eventually, TestApp};

/// Long enough to see the stop begin with the write held; a write's Redis round trip may
/// take this long (`redis.timeout` above it).
const PAUSE_MS: u64 = 2000;
fn redis_timeout_10s(c: &mut Config) {
    c.redis.timeout = Duration::from_secs(10);
}

/// Holds every write in Redis for [`PAUSE_MS`].
async fn pause_writes(app: &TestApp) {
    let mut conn = app.redis.conn().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE_MS)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .expect("client pause");
}

fn start(key: &str) -> Write {
    Write {
        key: key.to_owned(),
        via: Facade::Tcp,
        op: Op::Start,
        body: serde_json::json!({"obs_unit_id": 1}),
        outcome: Outcome::Dropped("not sent".into()),
    }
}

fn code(outcome: &Outcome) -> (u16, Value) {
    match outcome {
        Outcome::Answered { status, body } => (*status, body["error"]["code"].clone()),
        Outcome::Dropped(why) => panic!("no answer: {why}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_line_in_flight_is_acknowledged_and_the_lines_behind_it_refused_unstored() {
    let app = TestApp::spawn_with(redis_timeout_10s).await;
    let (addr, token) = (app.tcp, app.token.clone());
    let mut conn = TcpConn::connect(addr, &token).await.expect("connect");
    pause_writes(&app).await;
    let mut lines = vec![start("first"), start("second"), start("third")];
    let sent = tokio::spawn(async move {
        conn.exchange(&token, &mut lines).await;
        let ended = conn.ended().await;
        (lines, ended)
    });
    a_write_is_held(&app.redis, Duration::from_secs(1)).await;
    let stream = app.redis.clone();
    let keys = app.keys.clone();
    let stopping = tokio::spawn(app.stop());
    eventually(
        "new connections are refused",
        Duration::from_secs(1),
        || async { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await;

    let (lines, ended) = sent.await.expect("client");
    assert_eq!(code(&lines[0].outcome).0, 201, "{:?}", lines[0].outcome);
    for refused in &lines[1..] {
        assert_eq!(code(&refused.outcome), (503, "shutting_down".into()));
    }
    assert_eq!(ended, "eof", "closed with a FIN after the answers");
    stopping.await.expect("stop").expect("a clean stop");
    let mut conn = stream.conn().await;
    let stored: u64 = redis::cmd("XLEN")
        .arg(keys.stream())
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(stored, 1, "only the line in flight was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_request_in_flight_is_acknowledged_and_its_connection_closed() {
    let app = TestApp::spawn_with(redis_timeout_10s).await;
    let base = app.http.clone();
    let client = app.client.clone();
    let token = app.token.clone();
    pause_writes(&app).await;
    let url = format!("{base}/executed_obs_units/start");
    let sent = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(token)
            .header("Idempotency-Key", "in-flight")
            .json(&serde_json::json!({"obs_unit_id": 1}))
            .send()
            .await
    });
    a_write_is_held(&app.redis, Duration::from_secs(1)).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let stopping = tokio::spawn(app.stop());
    eventually(
        "new connections are refused",
        Duration::from_secs(1),
        || async { TcpStream::connect(&addr).await.is_err().then_some(()) },
    )
    .await;

    let answer = sent.await.expect("client").expect("an answer");
    assert_eq!(answer.status(), 201);
    assert_eq!(
        answer.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the connection closes after its answer"
    );
    stopping.await.expect("stop").expect("a clean stop");
}
