//! The forward path on a real primary with a real streaming replica.
//!
//! Invariant under test: every acknowledged write is applied on the primary exactly once,
//! in order; transactions the primary rejects for good are dead-lettered, and nothing else.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ops_db_actors::forwarder::CrashPoint;
use ops_db_actors::overlay::TxState;
use redis::AsyncCommands;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

/// Writes `n` files of one executed obs unit; the acknowledged transaction ids.
async fn files(app: &TestApp, eou: Uuid, n: usize) -> Vec<Uuid> {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = file_body(&eou.to_string());
        body["name"] = json!(format!("f{i}.fits"));
        let r = app.post("/raw_data_files/", &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(uuid(&r.body["transaction_id"]));
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_reaches_the_primary_once_in_order_with_its_commit_lsn() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let mut acked = Vec::new();
    let (eou, tx) = start_obs_unit(app, 1).await;
    acked.push(tx);
    let pkg = app
        .post(
            "/raw_data_package/",
            &json!({"name": "p", "executed_obs_unit_id": eou}),
        )
        .await;
    acked.push(uuid(&pkg.body["transaction_id"]));
    acked.extend(files(app, eou, 30).await);
    let bulk: Vec<_> = (0..5).map(|_| file_body(&eou.to_string())).collect();
    acked.push(uuid(
        &app.post("/raw_data_files/bulk", &json!(bulk)).await.body["transaction_id"],
    ));
    let fin = app
        .put(
            &format!("/raw_data_package/{}/finalize", uuid(&pkg.body["id"])),
            &json!({"file_count": 35}),
        )
        .await;
    acked.push(uuid(&fin.body["transaction_id"]));
    // A finish right behind its start, many times: a finish applied before its start would
    // be an update of a missing row, i.e. a dead letter.
    for _ in 0..20 {
        let (e, t) = start_obs_unit(app, 2).await;
        acked.push(t);
        let r = app
            .put(
                &format!("/executed_obs_units/{e}/finish"),
                &json!({"status": "completed"}),
            )
            .await;
        acked.push(uuid(&r.body["transaction_id"]));
    }
    let r = app
        .put(
            &format!("/executed_obs_units/{eou}/finish"),
            &json!({"status": "failed"}),
        )
        .await;
    acked.push(uuid(&r.body["transaction_id"]));

    site.drained(Duration::from_secs(30)).await;
    site.assert_exactly_once(&acked).await;
    assert!(site.dead_letters().await.is_empty(), "nothing was rejected");
    assert_eq!(site.files_on_primary(eou).await, 35);
    let mut db = site.primary().await;
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM executed_obs_unit GROUP BY status ORDER BY status",
    )
    .fetch_all(&mut db)
    .await
    .expect("statuses");
    assert_eq!(
        statuses,
        vec![("completed".into(), 20), ("failed".into(), 1)]
    );
    let package: (String, Option<i64>) =
        sqlx::query_as("SELECT status, file_count FROM raw_data_package")
            .fetch_one(&mut db)
            .await
            .expect("package");
    assert_eq!(package, ("complete".into(), Some(35)));

    // Each transaction got a commit LSN; the replica tracker then sees it replayed, marks it
    // `replicated` and takes it out of the LSN-scored set.
    let mut redis = app.redis.conn().await;
    eventually(
        "every transaction replicated",
        Duration::from_secs(20),
        || {
            let mut redis = redis.clone();
            let key = app.keys.forwarded();
            async move { (redis.zcard::<_, u64>(key).await.ok()? == 0).then_some(()) }
        },
    )
    .await;
    let life: HashMap<String, String> = redis
        .hgetall(app.keys.lifecycle(acked[0]))
        .await
        .expect("lifecycle");
    assert_eq!(
        life.get("state").map(|s| s.parse()),
        Some(Ok(TxState::Replicated))
    );
    let lsn: ops_db_actors::lsn::Lsn = life["commit_lsn"].parse().expect("an LSN");
    let current: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut db)
        .await
        .expect("lsn");
    assert!(
        lsn <= current.parse().expect("lsn"),
        "the recorded LSN is a real position"
    );
    // The replica follows: once it has replayed the recorded LSN, the rows are there.
    site.pg.wait_for_replay(&life["commit_lsn"]).await;
    let on_replica: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM opsdb_api.applied_transaction WHERE transaction_id = $1",
    )
    .bind(acked[0])
    .fetch_one(&mut site.pg.replica().await)
    .await
    .expect("replica count");
    assert_eq!(on_replica, 1);
    let m = &app.tree.forwarder_metrics;
    let (batches, trips) = (m.batches.get(), m.round_trips.get());
    assert_eq!(batches, trips, "one round trip per batch");
    // A status read is reused for up to STATUS_TTL: the drained buffer shows on a later one.
    let health = eventually("nothing unforwarded", Duration::from_secs(5), || async {
        let h = app.get("/health").await;
        (h.body["transaction_buffer"]["oldest_unforwarded_secs"] == 0.0).then_some(h)
    })
    .await;
    assert_eq!(health.body["database"], "connected", "{}", health.text);
}

/// Crashes the forwarder once at `point` with writes in flight.
async fn crash_at(point: CrashPoint) {
    let site = Site::start(false, |c| c.forwarder.batch_size = 10).await;
    let app = &site.app;
    app.tree.crash_points.arm(point);
    let (eou, tx) = start_obs_unit(app, 3).await;
    let mut acked = vec![tx];
    acked.extend(files(app, eou, 40).await);
    site.drained(Duration::from_secs(30)).await;
    assert_eq!(app.tree.crash_points.pending(), 0, "the crash happened");
    site.assert_exactly_once(&acked).await;
    assert_eq!(site.files_on_primary(eou).await, 40);
    let row = app.tree.health.get("forwarder").expect("forwarder row");
    assert!(row.restarts >= 1, "the supervisor restarted the forwarder");
    assert!(row
        .last_failure
        .expect("a failure")
        .reason
        .contains("injected crash"));
    let skipped = app.tree.forwarder_metrics.skipped.get();
    match point {
        CrashPoint::AfterCommit => assert!(
            skipped > 0,
            "the replayed batch was found in the ledger and skipped"
        ),
        // A batch is settled while the next one is on its way: a crash after settling
        // one may leave the next committed and not settled, replayed and skipped. No
        // more than that one batch.
        CrashPoint::AfterAck => assert!(
            skipped <= 10,
            "at most the batch on its way was replayed: {skipped} skipped"
        ),
        CrashPoint::BeforeCommit => assert_eq!(skipped, 0, "nothing was committed twice"),
    }
    assert!(site.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarder_crash_before_the_commit_loses_and_duplicates_nothing() {
    crash_at(CrashPoint::BeforeCommit).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarder_crash_between_commit_and_ack_replays_without_effect() {
    crash_at(CrashPoint::AfterCommit).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarder_crash_after_the_ack_loses_and_duplicates_nothing() {
    crash_at(CrashPoint::AfterAck).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_cut_during_a_batch_loses_and_duplicates_nothing() {
    let site = Site::start(true, |c| c.forwarder.batch_size = 50).await;
    let wan = site.wan.as_ref().expect("wan");
    wan.set_delay(Duration::from_millis(100));
    let app = &site.app;
    let (eou, tx) = start_obs_unit(app, 4).await;
    let mut acked = vec![tx];
    acked.extend(files(app, eou, 150).await);
    // Cut while batches are on the wire, twice.
    for _ in 0..2 {
        eventually("a batch in flight", Duration::from_secs(10), || async {
            (app.tree.forwarder_metrics.round_trips.get()
                > app.tree.forwarder_metrics.batches.get())
            .then_some(())
        })
        .await;
        wan.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        wan.heal();
    }
    site.drained(Duration::from_secs(60)).await;
    site.assert_exactly_once(&acked).await;
    assert!(
        site.dead_letters().await.is_empty(),
        "transient errors are never dead-lettered"
    );
    assert!(app.tree.health.get("forwarder").expect("row").restarts >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_link_stalls_then_recovers_without_loss_or_duplicates() {
    let site = Site::start(true, |c| {
        c.forwarder.batch_size = 50;
        c.forwarder.statement_timeout = Duration::from_secs(1);
    })
    .await;
    let wan = site.wan.as_ref().expect("wan");
    let app = &site.app;
    let (eou, tx) = start_obs_unit(app, 5).await;
    let mut acked = vec![tx];
    site.drained(Duration::from_secs(30)).await;
    wan.blackhole();
    acked.extend(files(app, eou, 60).await);
    // The forwarder times out on the stalled link and restarts, again and again.
    eventually(
        "the forwarder gives up on the stalled link",
        Duration::from_secs(20),
        || async {
            let row = app.tree.health.get("forwarder")?;
            (row.restarts >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        app.buffered_count().await,
        60,
        "nothing got through the blackhole"
    );
    wan.heal();
    site.drained(Duration::from_secs(30)).await;
    site.assert_exactly_once(&acked).await;
    assert!(site.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_restart_mid_stream_loses_and_duplicates_nothing() {
    let site = Site::start(false, |c| c.forwarder.batch_size = 20).await;
    let app = &site.app;
    let (eou, tx) = start_obs_unit(app, 6).await;
    let mut acked = vec![tx];
    acked.extend(files(app, eou, 30).await);
    site.pg.kill_primary().await;
    acked.extend(files(app, eou, 30).await);
    site.pg.restart_primary().await;
    acked.extend(files(app, eou, 30).await);
    site.drained(Duration::from_secs(60)).await;
    site.assert_exactly_once(&acked).await;
    assert_eq!(site.files_on_primary(eou).await, 90);
    assert!(site.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_in_the_middle_of_a_batch_is_dead_lettered_and_the_rest_applied() {
    let site = Site::start(false, |c| c.forwarder.linger = Duration::from_millis(300)).await;
    let app = &site.app;
    // Within one batch: good, poison (no obs_unit 999), good, update of a row that will
    // never exist, good.
    let (good, t1) = start_obs_unit(app, 7).await;
    let (poisoned, t2) = start_obs_unit(app, 999).await;
    let t3 = files(app, good, 1).await[0];
    let r = app
        .put(
            &format!("/executed_obs_units/{poisoned}/finish"),
            &json!({"status": "completed"}),
        )
        .await;
    let t4 = uuid(&r.body["transaction_id"]);
    let r = app
        .put(
            &format!("/executed_obs_units/{good}/finish"),
            &json!({"status": "completed"}),
        )
        .await;
    let t5 = uuid(&r.body["transaction_id"]);
    site.drained(Duration::from_secs(30)).await;

    site.assert_exactly_once(&[t1, t3, t5]).await;
    let dead = site.dead_letters().await;
    let by_tx: HashMap<Uuid, &Value> = dead
        .iter()
        .map(|d| (uuid(&d["transaction_id"]), d))
        .collect();
    assert_eq!(by_tx.len(), 2, "{dead:?}");
    assert_eq!(by_tx[&t2]["sqlstate"], "23503");
    assert!(by_tx[&t2]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("foreign key"));
    assert_eq!(by_tx[&t4]["sqlstate"], "P0002");
    assert!(by_tx[&t4]["attempts"].as_u64().unwrap_or(0) >= 1);
    let mut redis = app.redis.conn().await;
    let state: Option<TxState> = redis
        .hget(app.keys.lifecycle(t2), "state")
        .await
        .expect("hget");
    assert_eq!(state, Some(TxState::Dead));
    // Dead writers release their overlay: the record never existed anywhere.
    let overlay_left: bool = redis
        .exists(
            app.keys
                .record(ops_db_actors::domain::Table::ExecutedObsUnit, poisoned),
        )
        .await
        .expect("exists");
    assert!(!overlay_left, "a dead transaction's overlay is released");
    app.get_auth(&format!("/executed_obs_units/{poisoned}"))
        .await
        .assert_error(404, "not_found");
    eventually(
        "two dead letters counted",
        Duration::from_secs(5),
        || async {
            let h = app.get("/health").await;
            (h.body["transaction_buffer"]["failed"] == 2).then_some(())
        },
    )
    .await;

    // Repair the cause, retry one, drop the other.
    sqlx::query("INSERT INTO obs_unit (id, name) VALUES (999, 'added in Cologne')")
        .execute(&mut site.primary().await)
        .await
        .expect("repair");
    let retry = app
        .admin_post(&format!(
            "/admin/dlq/{}/retry",
            by_tx[&t2]["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    let drop = app
        .admin_delete(&format!(
            "/admin/dlq/{}",
            by_tx[&t4]["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(drop.status, 200, "{}", drop.text);
    assert_eq!(
        app.admin_delete(&format!(
            "/admin/dlq/{}",
            by_tx[&t4]["id"].as_str().expect("id")
        ))
        .await
        .status,
        404
    );
    site.drained(Duration::from_secs(30)).await;
    site.assert_exactly_once(&[t1, t2, t3, t5]).await;
    assert!(site.dead_letters().await.is_empty());
}

/// p99 of `n` sequential writes, and how many were acknowledged.
async fn ingest_sample(app: &TestApp, n: usize) -> (Duration, usize) {
    let mut latencies = Vec::with_capacity(n);
    let mut ok = 0;
    let body = file_body(&Uuid::now_v7().to_string());
    for _ in 0..n {
        let t = Instant::now();
        let r = app.post("/raw_data_files/", &body).await;
        latencies.push(t.elapsed());
        ok += usize::from(r.status == 201);
    }
    latencies.sort();
    (latencies[n * 99 / 100], ok)
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_does_not_notice_a_forwarder_crash_loop() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    let (quiet_p99, quiet_ok) = ingest_sample(app, 400).await;
    wan.cut();
    let before = app.tree.health.get("forwarder").expect("row").restarts;
    let (loop_p99, loop_ok) = ingest_sample(app, 400).await;
    let after = app.tree.health.get("forwarder").expect("row").restarts;
    println!(
        "ingest p99 quiet {quiet_p99:?}, during the crash loop {loop_p99:?} ({} restarts)",
        after - before
    );
    assert!(
        after > before + 2,
        "the forwarder was crash-looping ({} restarts)",
        after - before
    );
    assert_eq!(
        (quiet_ok, loop_ok),
        (400, 400),
        "every write acknowledged in both phases"
    );
    // Generous: this machine is shared; the benchmark has the precise figure.
    assert!(
        loop_p99 <= quiet_p99 * 3 + Duration::from_millis(5),
        "p99 quiet {quiet_p99:?} vs crash loop {loop_p99:?}"
    );
    // The forwarder alternates between an attempt (`running`, up to `connect_timeout`)
    // and its backoff (`unreachable`): one sample may land on an attempt.
    eventually(
        "/health says the primary is unreachable",
        Duration::from_secs(10),
        || async { (app.get("/health").await.body["database"] == "unreachable").then_some(()) },
    )
    .await;
    wan.heal();
    site.drained(Duration::from_secs(30)).await;
}
