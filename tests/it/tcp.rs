//! The TCP facade: newline-delimited JSON with the same operations and errors as HTTP.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::{eventually, file_body, TestApp};

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(app: &TestApp) -> Self {
        let stream = TcpStream::connect(app.tcp).await.expect("tcp connect");
        let (r, w) = stream.into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send_raw(&mut self, line: &str) -> Option<Value> {
        self.writer.write_all(line.as_bytes()).await.ok()?;
        self.writer.write_all(b"\n").await.ok()?;
        self.read().await
    }

    async fn read(&mut self) -> Option<Value> {
        let mut reply = String::new();
        match self.reader.read_line(&mut reply).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&reply).expect("reply line is JSON")),
        }
    }

    async fn send(&mut self, request: Value) -> Value {
        self.send_raw(&request.to_string())
            .await
            .expect("a reply line")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_writes_round_trip_with_request_ids() {
    let app = TestApp::spawn().await;
    let mut c = Client::connect(&app).await;
    let start = c
        .send(json!({"op": "executed_obs_units.start", "token": app.token, "request_id": 1, "body": {"obs_unit_id": 3}}))
        .await;
    assert_eq!(start["status"], 201, "{start}");
    assert_eq!(start["request_id"], 1);
    assert_eq!(start["body"]["status"], "buffered");
    let id = start["body"]["id"].as_str().expect("id").to_owned();

    let file = c
        .send(json!({"op": "raw_data_files.create", "token": app.token, "request_id": "f1", "body": file_body(&id)}))
        .await;
    assert_eq!(file["status"], 201, "{file}");
    assert_eq!(file["request_id"], "f1");

    let finish = c
        .send(
            json!({"op": "executed_obs_units.finish", "token": app.token, "request_id": 2, "id": id,
                     "idempotency_key": "tcp-finish", "body": {"status": "completed"}}),
        )
        .await;
    assert_eq!(finish["status"], 200, "{finish}");
    let again = c
        .send(
            json!({"op": "executed_obs_units.finish", "token": app.token, "request_id": 3, "id": id,
                     "idempotency_key": "tcp-finish", "body": {"status": "completed"}}),
        )
        .await;
    assert_eq!(again["body"], finish["body"], "idempotent over TCP too");

    let ops: Vec<String> = app.buffered().await.into_iter().map(|t| t.op).collect();
    assert_eq!(
        ops,
        [
            "executed_obs_units.start",
            "raw_data_files.create",
            "executed_obs_units.finish"
        ]
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_line_gets_an_error_line_and_the_connection_stays_usable() {
    let app = TestApp::spawn().await;
    let mut c = Client::connect(&app).await;
    let cases = [
        ("{not json".to_owned(), 400, "malformed_json"),
        (json!({"op": "executed_obs_units.start", "request_id": 9, "body": {"obs_unit_id": 1}}).to_string(), 401, "unauthorized"),
        (json!({"op": "executed_obs_units.start", "token": "nope", "body": {"obs_unit_id": 1}}).to_string(), 401, "unauthorized"),
        (json!({"op": "observations.delete", "token": app.token, "body": {}}).to_string(), 404, "unknown_op"),
        (json!({"op": "executed_obs_units.start", "token": app.token, "body": {"obs_unit_id": "x"}}).to_string(), 422, "invalid_field"),
        (json!({"op": "executed_obs_units.start", "token": app.token, "body": {"obs_unit_id": 1}, "extra": 1}).to_string(), 422, "unknown_field"),
        (json!({"op": "executed_obs_units.finish", "token": app.token, "id": "42", "body": {"status": "completed"}}).to_string(), 422, "invalid_id"),
        (json!({"op": "executed_obs_units.start", "token": app.token}).to_string(), 400, "malformed_json"),
        (json!({"op": "raw_data_files.bulk", "token": app.token, "body": []}).to_string(), 422, "invalid_value"),
    ];
    for (line, status, code) in &cases {
        let reply = c
            .send_raw(line)
            .await
            .unwrap_or_else(|| panic!("a reply to {line}"));
        assert_eq!(reply["status"], *status, "{line} -> {reply}");
        assert_eq!(reply["error"]["code"], *code, "{line} -> {reply}");
    }
    // On a fresh connection: `c` has presented a valid token, which a tokenless request
    // would now use.
    let mut fresh = Client::connect(&app).await;
    let second = fresh.send_raw(&cases[1].0).await.expect("reply");
    assert_eq!(second["request_id"], 9, "request ids are echoed on errors");
    assert_eq!(app.buffered_count().await, 0);
    let ok = c
        .send(json!({"op": "executed_obs_units.start", "token": app.token, "body": {"obs_unit_id": 1}}))
        .await;
    assert_eq!(ok["status"], 201, "still usable after errors: {ok}");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_long_line_gets_an_error_and_the_connection_is_closed() {
    let app = TestApp::spawn().await;
    let mut c = Client::connect(&app).await;
    let long = json!({"op": "executed_obs_units.start", "token": app.token,
                      "body": {"obs_unit_id": 1, "meta": {"pad": "x".repeat(70_000)}}});
    let reply = c
        .send_raw(&long.to_string())
        .await
        .expect("an error line before closing");
    assert_eq!(reply["status"], 413, "{reply}");
    assert_eq!(reply["error"]["code"], "line_too_long");
    assert!(c.read().await.is_none(), "the connection is closed");
    assert_eq!(app.buffered_count().await, 0);
    app.stop().await.expect("clean stop");
}

fn start_line(app: &TestApp, pad: usize) -> Value {
    json!({"op": "executed_obs_units.start", "token": app.token,
           "body": {"obs_unit_id": 1, "meta": {"pad": "x".repeat(pad)}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_line_before_a_token_is_refused_before_it_ends_and_after_auth_is_taken() {
    let app = TestApp::spawn().await;
    let mut stranger = Client::connect(&app).await;
    // 8 KiB of a line that never ends: the answer comes without the service waiting for
    // (and buffering) the rest of it.
    let head = format!(
        "{{\"op\": \"executed_obs_units.start\", \"pad\": \"{}",
        "x".repeat(8192)
    );
    stranger
        .writer
        .write_all(head.as_bytes())
        .await
        .expect("write");
    let reply = stranger
        .read()
        .await
        .expect("an error line before the line ends");
    assert_eq!(reply["status"], 413, "{reply}");
    assert_eq!(reply["error"]["code"], "line_too_long");
    assert!(stranger.read().await.is_none(), "the connection is closed");

    let mut c = Client::connect(&app).await;
    let auth = c
        .send(json!({"op": "auth", "token": app.token, "request_id": 1}))
        .await;
    assert_eq!(auth["status"], 200, "{auth}");
    assert_eq!(auth["request_id"], 1);
    let large = c.send(start_line(&app, 30_000)).await;
    assert_eq!(
        large["status"], 201,
        "an authenticated connection takes large lines: {large}"
    );
    let tokenless = json!({"op": "executed_obs_units.start", "body": {"obs_unit_id": 1}});
    let reply = c.send(tokenless).await;
    assert_eq!(
        reply["status"], 201,
        "a request uses the connection's token: {reply}"
    );

    // A small request with a valid token authenticates the connection as well.
    let mut d = Client::connect(&app).await;
    assert_eq!(d.send(start_line(&app, 10)).await["status"], 201);
    assert_eq!(d.send(start_line(&app, 30_000)).await["status"], 201);
    assert_eq!(app.buffered_count().await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(|c| c.tcp.idle_timeout = Duration::from_millis(200)).await;
    let mut c = Client::connect(&app).await;
    assert_eq!(c.send(start_line(&app, 1)).await["status"], 201);
    let reply = tokio::time::timeout(Duration::from_secs(5), c.read())
        .await
        .expect("the service speaks first")
        .expect("an error line");
    assert_eq!(reply["status"], 408, "{reply}");
    assert_eq!(reply["error"]["code"], "idle_timeout");
    assert!(c.read().await.is_none(), "the connection is closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_refused_while_the_others_keep_working() {
    let app = TestApp::spawn_with(|c| c.tcp.max_connections = 2).await;
    // One after the other: of 2 slots, one address may hold 1 before its token
    // (`tcp.max_unauthenticated`, half of them per address; fairness.rs).
    let mut a = Client::connect(&app).await;
    assert_eq!(a.send(start_line(&app, 1)).await["status"], 201);
    let mut b = Client::connect(&app).await;
    assert_eq!(b.send(start_line(&app, 1)).await["status"], 201);
    let mut over = Client::connect(&app).await;
    let refused = over.read().await.expect("one error line");
    assert_eq!(refused["status"], 503, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_connections");
    assert!(over.read().await.is_none(), "and closed");
    assert_eq!(
        a.send(start_line(&app, 1)).await["status"],
        201,
        "the others go on"
    );
    drop(b);
    // The slot is free once the service has seen the client go.
    eventually("a freed slot", Duration::from_secs(5), || async {
        let mut c = Client::connect(&app).await;
        let reply = c.send_raw(&start_line(&app, 1).to_string()).await?;
        (reply["status"] == 201).then_some(())
    })
    .await;
}
