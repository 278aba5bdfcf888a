//! A 503 says what it knows: every refused write says whether it may have been stored
//! (`stored`: `false` or `"unknown"`), a `?wait=` that fails after the acknowledgement
//! answers 202 with it, and a TCP line resent with the same `request_id` gets the first
//! answer.
//!
//! Invariants under test: a write answered `stored: false` is not in the stream; every
//! acknowledged write is there exactly once; a write answered 202 is there.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::helpers::{
    assert_stored_exactly_once, eventually, file_body, kill_redis_once_writes_flow, tcp_write,
    uuid, TestApp,
};

/// What the writers saw.
#[derive(Default)]
struct Seen {
    /// The names of files whose write was answered `stored: false`.
    not_stored: Vec<String>,
    /// 503s answered `stored: "unknown"`.
    unknown: usize,
}

/// One writer: `n` files, each under its own idempotency key. A 503 `stored: "unknown"`
/// is retried with the same key and body, until it is acknowledged; a 503 `stored: false`
/// to a write none of whose attempts was answered `"unknown"` with a new key and a new
/// file name (nothing was stored, so this is a new write). (`false` speaks of the attempt
/// it answers: an earlier attempt with the same key may have been stored.) The
/// acknowledged transactions.
async fn writer(
    app: &TestApp,
    w: usize,
    n: usize,
    eou: String,
    seen: Arc<Mutex<Seen>>,
) -> Vec<Uuid> {
    let mut acked = Vec::new();
    for i in 0..n {
        let mut attempt = 0;
        let mut name = format!("w{w}_{i}_a{attempt}.fits");
        let mut uncertain = false;
        loop {
            let mut body = file_body(&eou);
            body["name"] = json!(name);
            let r = app
                .client
                .post(app.url("/raw_data_files/"))
                .bearer_auth(&app.token)
                .header("Idempotency-Key", &name)
                .json(&body)
                .send()
                .await
                .expect("the HTTP facade answers while Redis is down");
            let status = r.status().as_u16();
            let answer: Value = r.json().await.expect("json");
            match status {
                201 => {
                    acked.push(uuid(&answer["transaction_id"]));
                    break;
                }
                503 => {
                    let stored = &answer["error"]["stored"];
                    if *stored == json!(false) {
                        if !uncertain {
                            seen.lock().await.not_stored.push(name.clone());
                            attempt += 1;
                            name = format!("w{w}_{i}_a{attempt}.fits");
                        }
                    } else {
                        assert_eq!(stored, "unknown", "every 503 of a write says: {answer}");
                        uncertain = true;
                        seen.lock().await.unknown += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("unexpected status {other}: {answer}"),
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_write_gives_503s_that_say_stored_and_false_means_absent() {
    // Actors that need Redis restart while it is down; on a loaded machine the restart
    // of the container can outlast the default restart intensity, which is tested
    // elsewhere (faults.rs) and is not what this test is about.
    let app = TestApp::spawn_with(|c| c.supervisor.max_restarts = Some(1000)).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let eou = Uuid::now_v7().to_string();
    let load = async {
        let writers = (0..6).map(|w| writer(&app, w, 100, eou.clone(), Arc::clone(&seen)));
        futures::future::join_all(writers).await.concat()
    };
    let fault = async {
        kill_redis_once_writes_flow(&app, || async {
            let s = seen.lock().await;
            s.not_stored.len() + s.unknown >= 6
        })
        .await;
        app.redis.restart().await;
    };
    let (acked, ()) = tokio::join!(load, fault);
    assert_eq!(
        acked.len(),
        6 * 100,
        "every write was acknowledged in the end"
    );

    assert_stored_exactly_once(&app, &acked).await;
    let stored = app.buffered_json().await;

    let seen = seen.lock().await;
    assert!(
        !seen.not_stored.is_empty(),
        "Redis down refuses with stored: false"
    );
    for name in &seen.not_stored {
        let quoted = format!("\"{name}\"");
        assert!(
            !stored.iter().any(|tx| tx.contains(&quoted)),
            "{name} was answered stored: false but is in the stream"
        );
    }
    println!(
        "503s: {} stored: false, {} stored: unknown",
        seen.not_stored.len(),
        seen.unknown
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_whose_poll_fails_after_the_acknowledgement_answers_202_with_it() {
    // No forwarder: the write stays buffered, so the wait lasts its whole timeout.
    let app = TestApp::spawn().await;
    let body = json!({"obs_unit_id": 9});
    let waiting = app.post(
        "/executed_obs_units/start?wait=replicated&timeout=20s",
        &body,
    );
    let fault = async {
        eventually(
            "the write is acknowledged",
            Duration::from_secs(10),
            || async { (app.tree.buffer_metrics.acknowledged.get() >= 1).then_some(()) },
        )
        .await;
        app.redis.kill().await;
    };
    let (answer, ()) = tokio::join!(waiting, fault);
    assert_eq!(answer.status, 202, "the write is stored: {}", answer.text);
    let tx = uuid(&answer.body["transaction_id"]);
    uuid(&answer.body["id"]);
    assert_eq!(answer.body["status"], "buffered", "the state it last saw");

    app.redis.restart().await;
    let stored: Vec<Uuid> = app.buffered().await.iter().map(|t| t.id).collect();
    assert_eq!(
        stored,
        vec![tx],
        "the acknowledged write is in the stream once"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_line_resent_with_its_request_id_gets_the_first_answer() {
    let app = TestApp::spawn().await;
    let line = |request_id: Value| {
        json!({"op": "executed_obs_units.start", "token": app.token,
               "request_id": request_id, "body": {"obs_unit_id": 5}})
    };
    // As after a lost reply: the same line again, on a new connection.
    let first = tcp_write(app.tcp, &line(json!(41))).await;
    assert_eq!(first["status"], 201, "{first}");
    let again = tcp_write(app.tcp, &line(json!(41))).await;
    assert_eq!(again["status"], first["status"], "{again}");
    assert_eq!(again["body"], first["body"], "the first answer");
    assert_eq!(app.buffered_count().await, 1, "stored once");

    // The same id with another body is a reused key, named as the request_id.
    let mut other = line(json!(41));
    other["body"]["obs_unit_id"] = json!(6);
    let reused = tcp_write(app.tcp, &other).await;
    assert_eq!(reused["status"], 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    assert_eq!(reused["error"]["field"], "request_id");

    // Ids that are no valid key are ignored as keys: two writes.
    for _ in 0..2 {
        let free = tcp_write(app.tcp, &line(json!({"batch": 1}))).await;
        assert_eq!(free["status"], 201, "{free}");
        assert_eq!(free["request_id"], json!({"batch": 1}));
    }
    assert_eq!(app.buffered_count().await, 3);
    app.stop().await.expect("clean stop");
}
