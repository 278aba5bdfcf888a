//! Health endpoints: what operators and load balancers read.

use serde_json::json;

use crate::helpers::{eventually, TestApp};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_redis_durability_buffer_and_actors() {
    let app = TestApp::spawn().await;
    app.post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
        .await;

    // A status read within STATUS_TTL before the write may still be served.
    let h = eventually("the write counted", Duration::from_secs(5), || async {
        let h = app.get("/health").await;
        (h.body["transaction_buffer"]["size"] == 1).then_some(h)
    })
    .await;
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
    // A status read within STATUS_TTL before the change may still be served: wait it out.
    let h = eventually("reported", Duration::from_secs(5), || async {
        let h = app.get("/health").await;
        (h.body["redis_durability"]["durable"] == false).then_some(h)
    })
    .await;
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
    // The status read is reused for up to STATUS_TTL: the next read sees Redis gone.
    let not_ready = eventually("not ready", Duration::from_secs(5), || async {
        let r = app.get("/health/ready").await;
        (r.status == 503).then_some(r)
    })
    .await;
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

    let on = TestApp::spawn_with(|c| c.faults.enabled = true).await;
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
        let h = durable(&app, false).await;
        assert_eq!(h.body["status"], "degraded", "{key}: {}", h.text);
        assert_eq!(h.body["redis_durability"][field], wrong);
        let problems = h.body["redis_durability"]["problems"].to_string();
        assert!(problems.contains(key), "{key} is named: {problems}");
        config_set(&mut conn, key, right).await;
        durable(&app, true).await;
    }
    app.stop().await.expect("clean stop");
}

/// The first `/health` that reports Redis' durability as `durable` (a status read is
/// reused for up to `STATUS_TTL`, so a change shows on a later read).
async fn durable(app: &TestApp, durable: bool) -> crate::helpers::Reply {
    eventually("durability reported", Duration::from_secs(5), || async {
        let h = app.get("/health").await;
        (h.body["redis_durability"]["durable"] == durable).then_some(h)
    })
    .await
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

/// `INFO stats`' `total_net_output_bytes` and `INFO commandstats`' XRANGE calls (the
/// probe's script makes two per status read; nothing else reads a stream here).
async fn redis_counters(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("info");
    let field = |prefix: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map_or(0, |rest| {
                rest.trim_start_matches("calls=")
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
    };
    (field("total_net_output_bytes:"), field("cmdstat_xrange:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reads_the_oldest_entrys_age_without_its_body() {
    let app = TestApp::spawn().await;
    let eou = uuid::Uuid::now_v7();
    // About a megabyte in one stream entry (no primary: it stays buffered).
    let mut bulk = crate::helpers::bulk_body(eou, 1000, "big");
    for file in bulk.as_array_mut().expect("files") {
        file["meta"] = json!({ "pad": "x".repeat(600) });
    }
    let size = bulk.to_string().len();
    assert!((800_000..1_000_000).contains(&size), "{size} bytes");
    let written = std::time::Instant::now();
    let r = app.post("/raw_data_files/bulk", &bulk.take()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let conn = app.redis.conn().await;
    // One /health call during which the probe read Redis (not one served from the cache).
    let (bytes, h) = eventually("a /health that read Redis", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        let app = &app;
        async move {
            let (bytes_before, reads_before) = redis_counters(&mut conn).await;
            let h = app.get("/health").await;
            let (bytes_after, reads_after) = redis_counters(&mut conn).await;
            (reads_after > reads_before).then_some((bytes_after - bytes_before, h))
        }
    })
    .await;
    assert!(
        bytes < 32 * 1024,
        "one /health read {bytes} bytes from Redis with a 1 MB entry buffered"
    );
    let age = h.body["transaction_buffer"]["oldest_unforwarded_secs"]
        .as_f64()
        .unwrap_or_else(|| panic!("an age: {}", h.text));
    let elapsed = written.elapsed().as_secs_f64();
    assert!(
        (0.0..=elapsed + 1.0).contains(&age),
        "the oldest entry's age {age} s, written {elapsed} s ago"
    );
    drop(conn);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_health_and_metrics_requests_share_one_redis_read() {
    let app = TestApp::spawn().await;
    let mut conn = app.redis.conn().await;
    let (_, before) = redis_counters(&mut conn).await;
    let paths = ["/health", "/metrics", "/health/ready"];
    let answers = futures::future::join_all((0..48).map(|i| app.get(paths[i % paths.len()]))).await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let (_, after) = redis_counters(&mut conn).await;
    // Two XRANGEs per read; the 48 requests took far less than a second, so at most a
    // few reads (one per STATUS_TTL, plus one in flight at the start).
    let reads = (after - before) / 2;
    assert!(
        reads <= 4,
        "{reads} status reads for 48 concurrent requests"
    );
    app.stop().await.expect("clean stop");
}
