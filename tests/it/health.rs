//! Health endpoints: what operators and load balancers read.

use serde_json::json;

use crate::helpers::{eventually, TestApp};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_redis_durability_buffer_and_actors() {
    let app = TestApp::spawn().await;
    app.post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
        .await;

    let h = app.get("/health").await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.body["status"], "healthy", "{}", h.text);
    assert_eq!(h.body["redis"], "connected");
    assert_eq!(h.body["database"], "not_configured");
    assert_eq!(h.body["redis_durability"]["appendonly"], "yes");
    assert_eq!(h.body["redis_durability"]["appendfsync"], "always");
    assert_eq!(h.body["redis_durability"]["durable"], true);
    assert_eq!(h.body["transaction_buffer"]["size"], 1);
    assert_eq!(h.body["transaction_buffer"]["failed"], 0);
    assert_eq!(h.body["actors"]["ingest"], "running");
    assert_eq!(h.body["actors"]["buffer"], "running");

    assert_eq!(app.get("/health/live").await.status, 200);
    assert_eq!(app.get("/health/ready").await.status, 200);

    let actors = app.get("/health/actors").await;
    let rows = actors.body["actors"].as_array().expect("rows");
    let names: Vec<_> = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["buffer", "ingest", "notifier"]);
    for row in rows {
        assert_eq!(row["state"], "running");
        assert_eq!(row["restarts"], 0);
        assert!(row["uptime_secs"].as_f64().is_some());
        assert!(row["last_failure"].is_null());
    }

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("opsdb_writes_acknowledged_total 1"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("opsdb_actor_up{actor=\"ingest\"} 1"));
    assert!(metrics.text.contains("opsdb_buffer_transactions 1"));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_without_fsync_always_is_reported_as_not_durable() {
    let app = TestApp::spawn().await;
    let mut conn = app.redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query_async(&mut conn)
        .await
        .expect("config set");
    let h = app.get("/health").await;
    assert_eq!(h.body["status"], "degraded", "{}", h.text);
    assert_eq!(h.body["redis_durability"]["durable"], false);
    assert_eq!(h.body["redis_durability"]["appendfsync"], "everysec");
    assert!(
        h.body["redis_durability"]["problems"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("appendfsync")),
        "{}",
        h.text
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_redis() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/health/ready").await.status, 200);
    app.redis.kill().await;
    let not_ready = app.get("/health/ready").await;
    assert_eq!(not_ready.status, 503, "{}", not_ready.text);
    assert_eq!(not_ready.body["reasons"][0], "redis unreachable");
    assert_eq!(app.get("/health").await.body["redis"], "disconnected");
    assert_eq!(
        app.get("/health/live").await.status,
        200,
        "liveness does not depend on Redis"
    );
    app.redis.restart().await;
    eventually("ready again", Duration::from_secs(10), || async {
        (app.get("/health/ready").await.status == 200).then_some(())
    })
    .await;
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kill_drill_needs_the_admin_scope_and_faults_enabled() {
    let off = TestApp::spawn().await;
    let url = off.url("/admin/actors/buffer/kill");
    let r = off
        .client
        .post(&url)
        .bearer_auth(&off.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "faults_disabled");
    let writer = off
        .client
        .post(&url)
        .bearer_auth(&off.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(writer.status(), 403, "a write token is not an admin token");
    assert_eq!(
        off.client.post(&url).send().await.expect("sent").status(),
        401
    );
    off.stop().await.expect("clean stop");

    let on = TestApp::spawn_with("[faults]\nenabled = true\n").await;
    let r = on
        .client
        .post(on.url("/admin/actors/buffer/kill"))
        .bearer_auth(&on.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let r = on
        .client
        .post(on.url("/admin/actors/nope/kill"))
        .bearer_auth(&on.admin_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    eventually("buffer restarted", Duration::from_secs(10), || async {
        let a = on.get("/health/actors").await;
        let row = a.body["actors"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "buffer")?
            .clone();
        (row["restarts"] == 1 && row["state"] == "running").then_some(row)
    })
    .await;
    let ok = on
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
        .await;
    assert_eq!(ok.status, 201, "writes work after the restart");
    on.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_may_evict_or_skip_fsyncs_on_rewrite_is_reported_as_not_durable() {
    let app = TestApp::spawn().await;
    let mut conn = app.redis.conn().await;
    let h = app.get("/health").await;
    assert_eq!(h.body["redis_durability"]["durable"], true, "{}", h.text);
    // Each wrong setting alone makes Redis not durable, and is named.
    for (key, wrong, right, field) in [
        (
            "maxmemory-policy",
            "allkeys-lru",
            "noeviction",
            "maxmemory_policy",
        ),
        (
            "no-appendfsync-on-rewrite",
            "yes",
            "no",
            "no_appendfsync_on_rewrite",
        ),
    ] {
        config_set(&mut conn, key, wrong).await;
        let h = app.get("/health").await;
        assert_eq!(h.body["status"], "degraded", "{key}: {}", h.text);
        assert_eq!(h.body["redis_durability"]["durable"], false);
        assert_eq!(h.body["redis_durability"][field], wrong);
        let problems = h.body["redis_durability"]["problems"].to_string();
        assert!(problems.contains(key), "{key} is named: {problems}");
        config_set(&mut conn, key, right).await;
    }
    let h = app.get("/health").await;
    assert_eq!(h.body["redis_durability"]["durable"], true, "{}", h.text);
    app.stop().await.expect("clean stop");
}

async fn config_set(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .expect("config set");
}
