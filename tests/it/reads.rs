//! Read-your-writes at the summit: replica rows merged with the overlay, the lifecycle of
//! each transaction by LSN, waiting for a state, and the main site.

use std::time::Duration;

use ops_db_actors::overlay::TxState;
use ops_db_service::config::SiteMode;
use redis::AsyncCommands;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, sample, state_of, until_state, uuid, Reply, TestApp};
use crate::site::{fast_restarts, Site};

/// The record without its sync field, to compare what the overlay and the replica say.
fn without_sync(mut record: Value) -> Value {
    if let Some(map) = record.as_object_mut() {
        map.remove("sync");
        for nested in ["raw_data_files", "raw_data_packages"] {
            if let Some(Value::Array(items)) = map.get_mut(nested) {
                for item in items {
                    if let Some(m) = item.as_object_mut() {
                        m.remove("sync");
                    }
                }
            }
        }
    }
    record
}

/// Starts an executed obs unit with a package of two files, then finishes it.
async fn observation(app: &TestApp, obs_unit: i64) -> (Uuid, Uuid, Vec<Uuid>, Uuid) {
    let start = app
        .post(
            "/executed_obs_units/start",
            &json!({"obs_unit_id": obs_unit}),
        )
        .await;
    assert_eq!(start.status, 201, "{}", start.text);
    let eou = uuid(&start.body["id"]);
    let pkg = app
        .post(
            "/raw_data_package/",
            &json!({"name": "pkg", "executed_obs_unit_id": eou}),
        )
        .await;
    let pkg_id = uuid(&pkg.body["id"]);
    let mut files = Vec::new();
    for i in 0..2 {
        let mut f = file_body(&eou.to_string());
        f["name"] = json!(format!("f{i}.fits"));
        f["raw_data_package_id"] = json!(pkg_id);
        files.push(uuid(&app.post("/raw_data_files/", &f).await.body["id"]));
    }
    let finish = app
        .put(
            &format!("/executed_obs_units/{eou}/finish"),
            &json!({"status": "completed"}),
        )
        .await;
    assert_eq!(finish.status, 200, "{}", finish.text);
    (eou, pkg_id, files, uuid(&finish.body["transaction_id"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_read_back_at_once_and_read_the_same_from_the_replica_after_replication() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    // The link is down: everything is only in the overlay.
    wan.cut();
    let (eou, pkg, files, finish_tx) = observation(app, 1).await;

    let before = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(
        before.body["status"], "completed",
        "a start then a finish reads back finished"
    );
    assert_eq!(before.body["obs_unit_id"], 1);
    assert_eq!(before.body["sync"]["state"], "buffered");
    assert_eq!(
        uuid(&before.body["sync"]["transaction_id"]),
        finish_tx,
        "the newest writer"
    );
    assert_eq!(
        before.body["raw_data_files"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        before.body["raw_data_packages"].as_array().map(Vec::len),
        Some(1)
    );
    let list = app.get_auth("/executed_obs_units?obs_unit_id=1").await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(1), "{}", list.text);
    let by_old_path = app.get_auth("/executed_obs_units/1").await;
    assert_eq!(
        by_old_path.body, list.body,
        "the original's integer path lists by obs unit"
    );
    let package = app.get_auth(&format!("/raw_data_package/{pkg}")).await;
    assert_eq!(
        package.body["raw_data_files"].as_array().map(Vec::len),
        Some(2)
    );
    let file = app.get_auth(&format!("/raw_data_files/{}", files[0])).await;
    assert_eq!(file.body["raw_data_package_id"], json!(pkg));

    // The link heals: forwarded, replayed by the replica, marked replicated, overlay gone.
    wan.heal();
    until_state(app, finish_tx, TxState::Replicated, Duration::from_secs(20)).await;
    let mut redis = app.redis.conn().await;
    let overlay_left: bool = redis
        .exists(
            app.keys
                .record(ops_db_actors::domain::Table::ExecutedObsUnit, eou),
        )
        .await
        .expect("exists");
    assert!(
        !overlay_left,
        "the overlay record is released after replication"
    );
    let index: Vec<String> = redis
        .zrange(
            app.keys.index(
                ops_db_actors::domain::Table::ExecutedObsUnit,
                "obs_unit_id",
                "1",
            ),
            0,
            -1,
        )
        .await
        .expect("zrange");
    assert!(index.is_empty(), "and its index entries");
    let after = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(after.body["sync"]["state"], "replicated", "{}", after.text);
    assert_eq!(
        without_sync(after.body.clone()),
        without_sync(before.body.clone()),
        "the replica answers the same record"
    );

    let life = app.get_auth(&format!("/transactions/{finish_tx}")).await;
    for field in ["buffered_at", "forwarded_at", "replicated_at", "commit_lsn"] {
        assert!(life.body[field].is_string(), "{field} in {}", life.text);
    }
    let health = app.get("/health").await;
    assert_eq!(
        health.body["replica"]["state"], "running",
        "{}",
        health.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_replica_keeps_transactions_forwarded_and_reads_merged_until_it_resumes() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let mut replica = PgConnection::connect(&site.pg.replica_url())
        .await
        .expect("replica");
    crate::pg::set_replay(&mut replica, false).await;
    let (eou, _, _, tx) = observation(app, 2).await;
    until_state(app, tx, TxState::Forwarded, Duration::from_secs(20)).await;
    // Five more polls of the paused replica: the transaction must stay forwarded.
    let polls = &app.tree.replica_metrics.polls;
    let seen = polls.load(std::sync::atomic::Ordering::Relaxed);
    eventually("five more polls", Duration::from_secs(10), || async {
        (polls.load(std::sync::atomic::Ordering::Relaxed) >= seen + 5).then_some(())
    })
    .await;
    assert_eq!(state_of(app, tx).await, TxState::Forwarded);
    let read = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(
        read.body["status"], "completed",
        "reads still merged: {}",
        read.text
    );
    assert_eq!(read.body["sync"]["state"], "forwarded");
    assert!(read.body["sync"]["lsn"].is_string());
    let lag = app.get("/health").await.body["replica"]["lag_bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(lag > 0, "the lag is reported while paused");
    crate::pg::set_replay(&mut replica, true).await;
    until_state(app, tx, TxState::Replicated, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_replica_backs_off_without_touching_ingest_and_catches_up_after_restart() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    site.pg.stop_replica().await;
    let (eou, _, _, tx) = observation(app, 3).await;
    until_state(app, tx, TxState::Forwarded, Duration::from_secs(20)).await;
    eventually(
        "the replica tracker backs off",
        Duration::from_secs(20),
        || async {
            let row = app.tree.health.get("replica")?;
            (row.restarts >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(state_of(app, tx).await, TxState::Forwarded);
    let read = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(
        read.status, 200,
        "a record in the overlay reads without the replica: {}",
        read.text
    );
    assert_eq!(read.body["status"], "completed");
    assert_eq!(
        read.body["raw_data_files"].as_array().map(Vec::len),
        Some(2),
        "its files from the overlay"
    );
    assert_eq!(
        read.headers
            .get("x-opsdb-replica")
            .and_then(|v| v.to_str().ok()),
        Some("unavailable"),
        "the answer says the replica did not contribute"
    );
    // The source gave no connection: the reads that follow give it a short wait only (its
    // gate), and answer the same.
    let again = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!((again.status, &again.body), (read.status, &read.body));
    assert_eq!(
        again
            .headers
            .get("x-opsdb-replica")
            .and_then(|v| v.to_str().ok()),
        Some("unavailable")
    );
    let metrics = app.get("/metrics").await.text;
    let cut = sample(&metrics, "opsdb_read_source_cut_short_total").expect("the metric");
    assert!(cut >= 1.0, "the second read waited only briefly: {metrics}");
    let more = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 3}))
        .await;
    assert_eq!(more.status, 201, "ingest goes on");
    site.pg.start_replica().await;
    until_state(app, tx, TxState::Replicated, Duration::from_secs(20)).await;
    until_state(
        app,
        uuid(&more.body["transaction_id"]),
        TxState::Replicated,
        Duration::from_secs(20),
    )
    .await;
    // The gate opens again at the first answer: the replica contributes to reads.
    eventually(
        "reads use the replica again",
        Duration::from_secs(15),
        || async {
            let read = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
            (read.status == 200 && !read.headers.contains_key("x-opsdb-replica")).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_can_wait_for_forwarded_or_replicated() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    wan.cut();
    let waited = app
        .post(
            "/executed_obs_units/start?wait=forwarded&timeout=300ms",
            &json!({"obs_unit_id": 4}),
        )
        .await;
    assert_eq!(
        waited.status, 202,
        "timed out: the current state, {}",
        waited.text
    );
    assert_eq!(waited.body["status"], "buffered");
    let bad = app
        .post(
            "/executed_obs_units/start?wait=soon",
            &json!({"obs_unit_id": 4}),
        )
        .await;
    bad.assert_error(400, "invalid_query");
    assert_eq!(app.buffered_count().await, 1, "a bad wait stores nothing");
    wan.heal();
    let done = app
        .post(
            "/executed_obs_units/start?wait=replicated&timeout=20s",
            &json!({"obs_unit_id": 4}),
        )
        .await;
    assert_eq!(done.status, 201, "{}", done.text);
    assert_eq!(done.body["status"], "replicated");
}

/// The tracker polls slowly at rest and fast while transactions wait: a write forwarded
/// while it sleeps its (here one-minute) rest pace is seen replicated at once, because the
/// forwarder's settled batch ends the sleep; at rest it then polls no more than its pace,
/// nor while a paused replica keeps a transaction waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_forwarded_at_rest_wakes_the_tracker_which_then_rests_again() {
    let site = Site::start(false, |c| {
        c.replica.poll_interval = Duration::from_secs(60);
        c.replica.fast_poll_interval = Duration::from_millis(5);
    })
    .await;
    let app = &site.app;
    let polls = || {
        app.tree
            .replica_metrics
            .polls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The start's poll, then the rest pace: a minute to the next.
    eventually(
        "the tracker's first poll",
        Duration::from_secs(20),
        || async { (polls() > 0).then_some(()) },
    )
    .await;
    for n in 0..3 {
        let r = app
            .post("/executed_obs_units/start", &json!({"obs_unit_id": 5}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        // Far under the minute the tracker would otherwise sleep.
        until_state(
            app,
            uuid(&r.body["transaction_id"]),
            TxState::Replicated,
            Duration::from_secs(20),
        )
        .await;
        // Resting again: no poll for a while once nothing waits (the wake's own permit
        // and the last fast poll may still come).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at_rest = polls();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            polls(),
            at_rest,
            "round {n}: the tracker polls at its rest pace once nothing waits"
        );
    }

    // A replica that does not replay: a second of fast polls, then the rest pace, though
    // a transaction waits.
    let mut replica = PgConnection::connect(&site.pg.replica_url())
        .await
        .expect("replica");
    crate::pg::set_replay(&mut replica, false).await;
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 5}))
        .await;
    let stuck = uuid(&r.body["transaction_id"]);
    until_state(app, stuck, TxState::Forwarded, Duration::from_secs(20)).await;
    // The fast pace's second, and the one poll a wake kept for later may still bring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = polls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        polls(),
        stalled,
        "a stalled replay does not keep the fast pace"
    );
    assert_eq!(state_of(app, stuck).await, TxState::Forwarded);
    // Replaying again; the next forward wakes the tracker, which marks both.
    crate::pg::set_replay(&mut replica, true).await;
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 5}))
        .await;
    for tx in [stuck, uuid(&r.body["transaction_id"])] {
        until_state(app, tx, TxState::Replicated, Duration::from_secs(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycles_expire_from_redis_and_are_then_answered_from_the_ledger() {
    let site = Site::start(false, |c| c.replica.retention = Duration::from_secs(1)).await;
    let app = &site.app;
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 5}))
        .await;
    let tx = uuid(&r.body["transaction_id"]);
    let dead = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 4242}))
        .await;
    let dead_tx = uuid(&dead.body["transaction_id"]);
    until_state(app, tx, TxState::Replicated, Duration::from_secs(20)).await;
    let life = app.get_auth(&format!("/transactions/{dead_tx}")).await;
    assert_eq!(life.body["state"], "dead", "{}", life.text);
    assert_eq!(life.body["sqlstate"], "23503");
    assert!(life.body["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("foreign key"));
    eventually(
        "the lifecycle expires from Redis",
        Duration::from_secs(10),
        || async {
            let r = app.get_auth(&format!("/transactions/{tx}")).await;
            (r.body["source"] == "ledger").then_some(r)
        },
    )
    .await;
    let from_ledger = app.get_auth(&format!("/transactions/{tx}")).await;
    assert_eq!(from_ledger.body["state"], "replicated");
    assert_eq!(from_ledger.body["op"], "executed_obs_units.start");
    let unknown = app
        .get_auth(&format!("/transactions/{}", Uuid::now_v7()))
        .await;
    unknown.assert_error(404, "no_such_transaction");
    app.get_auth("/transactions/not-a-uuid")
        .await
        .assert_error(422, "invalid_id");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_main_site_reads_from_the_primary_and_sees_its_writes_replicated_at_once() {
    let pg = Site::primary_with_replica().await;
    let primary = pg.primary_url();
    let site = Site::start_with(pg, None, move |c| {
        c.site.mode = SiteMode::Main;
        c.forwarder.primary_url = Some(primary.clone());
        c.forwarder.linger = Duration::from_millis(5);
        fast_restarts(&mut c.forwarder.restart);
        c.replica.poll_interval = Duration::from_millis(50);
    })
    .await;
    let app = &site.app;
    let r = app
        .post(
            "/executed_obs_units/start?wait=replicated&timeout=10s",
            &json!({"obs_unit_id": 6}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "replicated");
    let eou = uuid(&r.body["id"]);
    let read = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(read.body["sync"]["state"], "replicated", "{}", read.text);
    assert_eq!(app.get("/health").await.body["mode"], "main");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_need_a_token_and_name_bad_ids() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let r: Reply = app
        .get(&format!("/raw_data_files/{}", Uuid::now_v7()))
        .await;
    r.assert_error(401, "unauthorized");
    app.get_auth(&format!("/raw_data_files/{}", Uuid::now_v7()))
        .await
        .assert_error(404, "not_found");
    app.get_auth("/raw_data_package/xyz")
        .await
        .assert_error(422, "invalid_id");
    app.get_auth("/executed_obs_units?obs_unit_id=abc")
        .await
        .assert_error(422, "invalid_query");
}
