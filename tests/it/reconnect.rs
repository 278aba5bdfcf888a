//! Redis restarts under an idle service: once Redis answers again, every write and every
//! read succeeds on its first try (no pooled connection fails once before it reconnects).

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::helpers::{file_body, TestApp};
use crate::site::Site;

/// Touches every Redis user: the buffer's pool, reads, `?wait=` and the dead-letter list.
async fn use_everything(app: &TestApp, eou: &str, round: &str) {
    let r = app
        .post(
            "/executed_obs_units/start?wait=forwarded&timeout=10s",
            &json!({"obs_unit_id": 3}),
        )
        .await;
    assert_eq!(r.status, 201, "{round}: wait=forwarded: {}", r.text);
    let r = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(r.status, 200, "{round}: read: {}", r.text);
    let tx = r.body["transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !tx.is_empty() {
        let r = app.get_auth(&format!("/transactions/{tx}")).await;
        assert_eq!(r.status, 200, "{round}: lifecycle: {}", r.text);
    }
    let r = app.admin_get("/admin/dlq").await;
    assert_eq!(r.status, 200, "{round}: dlq: {}", r.text);
}

/// `clients` writers posting `each` files at once; every answer must be a 201.
async fn burst(app: &TestApp, eou: &str, clients: usize, each: usize) {
    let writers = (0..clients).map(|c| async move {
        for i in 0..each {
            let mut body = file_body(eou);
            body["name"] = json!(format!("c{c}-{i}.fits"));
            let r = app.post("/raw_data_files/", &body).await;
            assert_eq!(r.status, 201, "client {c} write {i}: {}", r.text);
        }
    });
    join_all(writers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_redis_restart_every_write_and_read_succeeds_on_its_first_try() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 2}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let eou = r.body["id"].as_str().expect("id").to_owned();
    // Warm every connection first, so that each of them is stale after the restart.
    burst(app, &eou, 8, 5).await;
    use_everything(app, &eou, "before").await;
    site.drained(Duration::from_secs(30)).await;

    app.redis.kill().await;
    app.redis.restart().await;

    burst(app, &eou, 8, 10).await;
    use_everything(app, &eou, "after").await;
    burst(app, &eou, 8, 10).await;
    site.drained(Duration::from_secs(30)).await;
    let m = &app.tree.buffer_metrics;
    assert_eq!(m.failed.get(), 0, "no write refused");
    assert!(m.retried.get() > 0, "the stale pool was found and replaced");
}
