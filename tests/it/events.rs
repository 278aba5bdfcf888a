//! Events over `GET /ws/events`: lifecycle order, supervision events, resume with `since`
//! without gaps across a reconnect and a notifier restart, filters, slow clients.

use std::collections::HashSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A websocket to `/ws/events?{query}` with the writer's token in the header.
async fn connect(app: &TestApp, query: &str) -> Ws {
    let url = format!("{}/ws/events?{query}", app.http.replacen("http", "ws", 1));
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token).parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    ws
}

/// The next event (JSON text frames only), or `None` on close/timeout.
async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return Some(serde_json::from_str(&text).expect("event JSON"))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads events until `done` says so; fails after `within`.
async fn read_until(
    ws: &mut Ws,
    within: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next(ws, left)
            .await
            .unwrap_or_else(|| panic!("stream ended or timed out; got {seen:?}"));
        seen.push(event);
    }
    seen
}

fn lists(event: &Value, tx: Uuid) -> bool {
    event["transactions"]
        .as_array()
        .is_some_and(|txs| txs.iter().any(|t| t == &json!(tx) || t["id"] == json!(tx)))
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().expect("seq")
}

async fn write(app: &TestApp, eou: Uuid, name: &str) -> Uuid {
    let mut body = file_body(&eou.to_string());
    body["name"] = json!(name);
    let r = app.post("/raw_data_files/", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    uuid(&r.body["transaction_id"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_seen_buffered_then_forwarded_then_replicated() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let mut ws = connect(app, "").await;
    let (eou, _) = start_obs_unit(app, 2).await;
    let tx = write(app, eou, "travel.fits").await;
    let events = read_until(&mut ws, Duration::from_secs(30), |seen| {
        seen.iter()
            .any(|e| e["type"] == "tx.replicated" && lists(e, tx))
    })
    .await;
    let at = |kind: &str| {
        events
            .iter()
            .position(|e| e["type"] == kind && lists(e, tx))
            .unwrap_or_else(|| panic!("no {kind} for {tx} in {events:?}"))
    };
    let (buffered, forwarded, replicated) =
        (at("tx.buffered"), at("tx.forwarded"), at("tx.replicated"));
    assert!(buffered < forwarded && forwarded < replicated, "{events:?}");
    assert!(events[forwarded]["commit_lsn"]
        .as_str()
        .is_some_and(|l| l.contains('/')));
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seqs:?}"
    );
    assert!(events.iter().all(|e| e["at"].as_i64().is_some()));
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_with_since_misses_nothing_across_a_reconnect_and_a_notifier_restart() {
    let app = TestApp::spawn_with(|c| c.events.health_interval = Duration::from_millis(200)).await;
    let mut ws = connect(&app, "").await;
    let (eou, first) = start_obs_unit(&app, 1).await;
    let events = read_until(&mut ws, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| lists(e, first))
    })
    .await;
    let last = seq(events.last().expect("an event"));
    drop(ws);

    // While nobody listens: writes, then the notifier killed, then more writes.
    let mut written = Vec::new();
    for i in 0..20 {
        written.push(write(&app, eou, &format!("gap-{i}.fits")).await);
    }
    let mut watcher = connect(&app, "").await;
    assert!(
        app.tree.kill("notifier").await,
        "the drill kills the notifier"
    );
    // A client connected across the restart is closed, naming where to resume.
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), watcher.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close frame"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed.code, CloseCode::Restart);
    assert!(
        closed.reason.contains("reconnect with since="),
        "{}",
        closed.reason
    );
    for i in 20..40 {
        written.push(write(&app, eou, &format!("gap-{i}.fits")).await);
    }
    eventually(
        "the notifier runs again",
        Duration::from_secs(10),
        || async { app.tree.health.is_running("notifier").then_some(()) },
    )
    .await;

    let mut ws = connect(&app, &format!("since={last}")).await;
    let wanted: HashSet<Uuid> = written.iter().copied().collect();
    let events = read_until(&mut ws, Duration::from_secs(20), |seen| {
        let listed: HashSet<Uuid> = seen
            .iter()
            .filter(|e| e["type"] == "tx.buffered")
            .flat_map(|e| e["transactions"].as_array().cloned().unwrap_or_default())
            .map(|t| uuid(&t["id"]))
            .collect();
        let restarted = seen
            .iter()
            .any(|e| e["type"] == "actor.restarted" && e["actor"] == "notifier");
        wanted.is_subset(&listed) && restarted
    })
    .await;
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    let expected: Vec<u64> = (last + 1..=last + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every event after {last}, once, in order");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "actor.failed" && e["actor"] == "notifier"),
        "the kill itself is an event: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn types_filter_supervision_events_and_a_kill_shows_failed_then_restarted() {
    let app = TestApp::spawn().await;
    let mut ws = connect(&app, "types=actor.*").await;
    let (_eou, _) = start_obs_unit(&app, 3).await;
    assert!(app.tree.kill("ingest").await);
    let events = read_until(&mut ws, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| e["type"] == "actor.restarted")
    })
    .await;
    assert!(
        events
            .iter()
            .all(|e| e["type"].as_str().is_some_and(|t| t.starts_with("actor."))),
        "{events:?}"
    );
    let failed = events
        .iter()
        .position(|e| e["type"] == "actor.failed" && e["actor"] == "ingest");
    let restarted = events
        .iter()
        .position(|e| e["type"] == "actor.restarted" && e["actor"] == "ingest");
    assert!(failed.is_some() && failed < restarted, "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_is_closed_and_the_others_go_on() {
    let app = TestApp::spawn_with(|c| c.events.client_buffer = 256).await;
    let mut slow = connect(&app, "").await;
    let mut fast = connect(&app, "types=test.filler").await;
    let pad = "x".repeat(16 * 1024);
    let fast_reader = tokio::spawn(async move {
        let mut got = 0;
        while got < 2000 {
            match next(&mut fast, Duration::from_secs(20)).await {
                Some(e) if e["type"] == "test.filler" => got += 1,
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    // 32 MB in all, far more than the slow client's socket and its 256 events hold, in
    // steps a reading client keeps up with.
    for i in 0..2000 {
        app.tree
            .events
            .emit("test.filler", json!({ "i": i, "pad": pad }));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        fast_reader.await.expect("reader"),
        2000,
        "the reading client got everything"
    );
    // The slow one now reads: what fit into its socket, then the close with the reason.
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close frame"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::from(4000));
    assert!(frame.reason.contains("too slow"), "{}", frame.reason);
    let _ = slow.close(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_endpoint_checks_the_token_and_the_query() {
    let app = TestApp::spawn().await;
    let url = format!("{}/ws/events", app.http.replacen("http", "ws", 1));
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(refused.is_err(), "no token, no websocket");
    let r = app.get_auth("/ws/events?since=abc").await;
    r.assert_error(422, "invalid_query");
    let r = app.get_auth("/ws/events").await;
    r.assert_error(400, "not_a_websocket");
    // Browsers present the token as a subprotocol.
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("opsdb.events, opsdb.bearer.{}", app.token)
            .parse()
            .expect("header"),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connects");
    assert_eq!(response.headers()["sec-websocket-protocol"], "opsdb.events");
    start_obs_unit(&app, 4).await;
    let event = next(&mut ws, Duration::from_secs(10))
        .await
        .expect("an event");
    assert!(event["seq"].as_u64().is_some());
    let _ = ws.send(Message::Close(None)).await;
}

/// The periodic `health` event is the health report: its members beside `seq`, `type` and
/// `at` read into `HealthReport` and write back unchanged, and it says what `/health`
/// says.
#[tokio::test(flavor = "multi_thread")]
async fn the_health_event_is_the_health_report() {
    use ops_db_service::health_report::{ActorStatus, HealthReport, HealthStatus};
    let app = TestApp::spawn_with(|c| c.events.health_interval = Duration::from_millis(200)).await;
    start_obs_unit(&app, 1).await;
    let mut ws = connect(&app, "types=health").await;
    let events = read_until(&mut ws, Duration::from_secs(10), |seen| {
        seen.iter()
            .any(|e| e["transaction_buffer"]["size"].as_u64() == Some(1))
    })
    .await;
    let mut event = events.last().expect("a health event").clone();
    assert_eq!(event["type"], "health", "{event}");
    let body = event.as_object_mut().expect("an object");
    for key in ["seq", "type", "at"] {
        assert!(body.remove(key).is_some(), "{key}");
    }
    let body = Value::Object(body.clone());
    let report: HealthReport = serde_json::from_value(body.clone()).expect("a report");
    assert_eq!(serde_json::to_value(&report).expect("serialises"), body);
    assert_eq!(report.status, HealthStatus::Healthy);
    assert_eq!(report.actors.get("notifier"), Some(&ActorStatus::Running));
    let tree = report.tree.expect("the tree");
    let names: Vec<&str> = tree.actors.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["buffer", "ingest", "notifier"]);
    let served = app.get("/health").await.body;
    assert_eq!(body["site"], served["site"]);
    assert_eq!(
        body["transaction_buffer"]["size"],
        served["transaction_buffer"]["size"]
    );
    app.stop().await.expect("clean stop");
}
