//! Heal detection: after an outage of any length, forwarding resumes within about a second
//! of the link coming back, however long the forwarder's backoff has grown.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{eventually, file_body};
use crate::site::Site;

/// A cap far longer than the bound below, so that sitting out the backoff would fail.
const RESTART: &str = "[forwarder.restart]\nbackoff_base = \"250ms\"\nbackoff_cap = \"6s\"\n\
                       reset_after = \"60s\"\n";

/// From the heal to the first batch committed: one probe interval (250 ms), the probe's
/// round trip, a connect and one batch, with room for a shared machine.
const DRAIN_STARTS_WITHIN: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread")]
async fn after_a_long_cut_the_backlog_starts_draining_within_1_5_s_of_the_heal() {
    let site = Site::start(true, &format!("batch_size = 100\n{RESTART}")).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 7}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let eou = r.body["id"].as_str().expect("id").to_owned();
    site.drained(Duration::from_secs(30)).await;

    wan.cut();
    let backlog = 300;
    for i in 0..backlog {
        let mut body = file_body(&eou);
        body["name"] = json!(format!("f{i}.fits"));
        assert_eq!(app.post("/raw_data_files/", &body).await.status, 201);
    }
    // 250 ms, 500 ms, 1 s, 2 s, 4 s, then 6 s: from the sixth restart on, each backoff is
    // drawn from the whole capped range.
    eventually(
        "the forwarder's backoff reaches its cap",
        Duration::from_secs(60),
        || async { (app.tree.health.get("forwarder")?.restarts >= 6).then_some(()) },
    )
    .await;
    assert_eq!(app.buffered_count().await, backlog);

    let healed = Instant::now();
    wan.heal();
    eventually(
        "the backlog starts draining",
        DRAIN_STARTS_WITHIN,
        || async { (app.buffered_count().await < backlog).then_some(()) },
    )
    .await;
    println!("draining {:?} after the heal", healed.elapsed());
    site.drained(Duration::from_secs(30)).await;
}
