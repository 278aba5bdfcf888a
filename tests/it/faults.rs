//! Faults: actors killed and Redis killed while writes are in flight.
//!
//! Invariant under test: every acknowledged write is in the stream exactly once, and a
//! caller sees either an acknowledgement or a 503, nothing else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    assert_stored_exactly_once, eventually, file_body, kill_redis_once_writes_flow, TestApp,
};

#[derive(Default)]
struct Tally {
    unavailable: AtomicU64,
}

/// Writes `per_writer` files from each of `writers` tasks, each with its own idempotency
/// key, retrying 503s with the same key as a careful client does. Returns the
/// acknowledged transaction ids.
async fn write_with_retries(
    app: &TestApp,
    writers: usize,
    per_writer: usize,
    tally: Arc<Tally>,
) -> Vec<Uuid> {
    let eou = Uuid::now_v7().to_string();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, url, token, body, tally) = (
            app.client.clone(),
            app.url("/raw_data_files/"),
            app.token.clone(),
            file_body(&eou),
            Arc::clone(&tally),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per_writer {
                let key = format!("w{w}-{i}");
                loop {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &key)
                        .json(&body)
                        .send()
                        .await
                        .expect("the HTTP facade answers even while actors die");
                    match r.status().as_u16() {
                        201 => {
                            let v: serde_json::Value = r.json().await.expect("json");
                            let tx = v["transaction_id"]
                                .as_str()
                                .and_then(|s| Uuid::parse_str(s).ok())
                                .expect("tx id");
                            acked.push(tx);
                            break;
                        }
                        503 => {
                            assert!(
                                r.headers().contains_key("retry-after"),
                                "503 carries Retry-After"
                            );
                            tally.unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => panic!(
                            "unexpected status {other}: {}",
                            r.text().await.unwrap_or_default()
                        ),
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("writer"));
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_ingest_actors_under_load_loses_and_duplicates_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.supervisor.max_restarts = Some(1000);
        c.supervisor.backoff_base = Duration::from_millis(5);
        c.supervisor.backoff_cap = Duration::from_millis(50);
    })
    .await;
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (tree, done) = (Arc::clone(&app.tree), Arc::clone(&done));
        tokio::spawn(async move {
            let mut kills = 0u32;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let name = if kills % 2 == 0 { "buffer" } else { "ingest" };
                if tree.kill(name).await {
                    kills += 1;
                }
            }
            kills
        })
    };
    let tally = Arc::new(Tally::default());
    let acked = write_with_retries(&app, 16, 60, Arc::clone(&tally)).await;
    done.store(true, Ordering::Relaxed);
    let kills = killer.await.expect("killer");
    assert!(kills >= 4, "the drill killed actors ({kills} kills)");
    assert_eq!(
        acked.len(),
        16 * 60,
        "every write was eventually acknowledged"
    );
    assert_stored_exactly_once(&app, &acked).await;
    assert_eq!(
        app.buffered_count().await,
        16 * 60,
        "one stream entry per idempotency key"
    );

    let restarts: u64 = app.tree.health.snapshot().iter().map(|a| a.restarts).sum();
    assert!(
        restarts >= u64::from(kills) - 1,
        "the supervisor restarted them ({restarts} restarts, {kills} kills)"
    );
    eventually(
        "both actors running again",
        Duration::from_secs(10),
        || async {
            (app.tree.health.is_running("ingest") && app.tree.health.is_running("buffer"))
                .then_some(())
        },
    )
    .await;
    println!(
        "kills: {kills}, 503s seen by writers: {}",
        tally.unavailable.load(Ordering::Relaxed)
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_load_refuses_writes_and_keeps_every_acknowledged_one() {
    let app = TestApp::spawn().await;
    let tally = Arc::new(Tally::default());
    let load = {
        let tally = Arc::clone(&tally);
        let app = &app;
        async move { write_with_retries(app, 8, 150, tally).await }
    };
    let fault = async {
        // Then bring it back on the same data.
        kill_redis_once_writes_flow(&app, || async {
            tally.unavailable.load(Ordering::Relaxed) >= 8
        })
        .await;
        let refused = app
            .post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
            .await;
        let error = refused.assert_error(503, "buffer_unavailable");
        assert!(
            !error["message"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("redis error"),
            "no Redis text leaks"
        );
        assert_eq!(
            refused
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        app.redis.restart().await;
    };
    let (acked, ()) = tokio::join!(load, fault);
    assert!(tally.unavailable.load(Ordering::Relaxed) > 0);
    assert_eq!(acked.len(), 8 * 150);
    assert_stored_exactly_once(&app, &acked).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_refuses_with_503_and_stores_nothing_more() {
    let app = TestApp::spawn_with(|c| c.buffer.max_buffered = 3).await;
    for _ in 0..3 {
        assert_eq!(
            app.post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
                .await
                .status,
            201
        );
    }
    let full = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
        .await;
    let error = full.assert_error(503, "buffer_full");
    assert!(error["message"].as_str().unwrap_or_default().contains('3'));
    assert_eq!(
        full.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert_eq!(app.buffered_count().await, 3);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn exceeding_the_restart_intensity_stops_the_service_with_an_error() {
    let app = TestApp::spawn_with(|c| {
        c.supervisor.max_restarts = Some(2);
        c.supervisor.within = Some(Duration::from_secs(60));
        c.supervisor.backoff_base = Duration::from_millis(5);
        c.supervisor.backoff_cap = Duration::from_millis(10);
    })
    .await;
    for round in 0..2 {
        assert!(app.tree.kill("ingest").await, "kill {round}");
        eventually("ingest restarted", Duration::from_secs(10), || async {
            let row = app.tree.health.get("ingest")?;
            (row.restarts == round + 1 && app.tree.health.is_running("ingest")).then_some(())
        })
        .await;
    }
    assert!(app.tree.kill("ingest").await);
    let result = app.join(Duration::from_secs(30)).await;
    let err = result.expect_err("an escalated tree ends the service with an error");
    assert!(err.to_string().contains("restart intensity"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_whose_callers_timed_out_are_not_stored_later() {
    let app = TestApp::spawn_with(|c| {
        c.http.request_timeout = Duration::from_millis(300);
        c.redis.timeout = Duration::from_secs(10);
    })
    .await;
    // Block Redis for 1.5 s with a busy script from a connection of our own.
    let mut blocker = redis::Client::open(app.redis.admin_url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .expect("connect");
    let block = tokio::spawn(async move {
        let script = "local t0 = redis.call('TIME') \
                      while true do local t = redis.call('TIME') \
                      if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 1500000 then return 1 end end";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .query_async(&mut blocker)
            .await
            .expect("busy script");
    });
    // Not observable from outside (Redis blocks every other client while a script runs):
    // give the script time to start before the writes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first write goes out in a pipeline that Redis will only answer after the block;
    // the next ones queue behind it. All callers time out first.
    let body = json!({"obs_unit_id": 1});
    let first = app.post("/executed_obs_units/start", &body);
    let queued = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        futures::future::join_all((0..10).map(|_| app.post("/executed_obs_units/start", &body)))
            .await
    };
    let (first, queued) = tokio::join!(first, queued);
    first.assert_error(503, "buffer_unavailable");
    for r in &queued {
        r.assert_error(503, "buffer_unavailable");
    }
    block.await.expect("block ends");
    let metrics = &app.tree.buffer_metrics;
    eventually(
        "queued writes abandoned",
        Duration::from_secs(10),
        || async { (metrics.abandoned.get() == 10).then_some(()) },
    )
    .await;
    // Only the write already sent to Redis may have been stored (its caller was told 503,
    // which allows that; a retry with an Idempotency-Key would get its first answer).
    assert!(
        app.buffered_count().await <= 1,
        "abandoned writes were not stored"
    );
    let after = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 3}))
        .await;
    assert_eq!(after.status, 201, "the buffer works on after the stall");
    app.stop().await.expect("clean stop");
}
