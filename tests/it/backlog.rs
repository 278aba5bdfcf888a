//! A backlog far beyond one script call: a replica down while thousands of transactions,
//! bulk registrations of 1,000 files among them, are forwarded (DESIGN §9).
//!
//! Invariants under test: every forwarded transaction becomes `replicated` and releases its
//! overlay once the replica is back, whatever the backlog; no script call holds Redis long
//! enough to slow ingest (ingest p99 while the backlog is worked off, against the quiet p99
//! in the same run: an ignored test, run alone); a release split over calls, or cut by a
//! crash between calls, loses and duplicates nothing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use ops_db_devkit::slow_log;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{bulk_body, eventually, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

/// Single writes in the backlog: 200 times `TXS_PER_CALL` (25).
const SINGLES: usize = 5_000;
/// Bulk registrations of `BULK_FILES` files: each is twenty times `RECORDS_PER_CALL` (50).
const BULKS: usize = 5;
const BULK_FILES: usize = 1_000;
const WRITERS: usize = 8;

/// One file write; its transaction id and how long the acknowledgement took.
async fn write_file(app: &TestApp, eou: Uuid, name: &str) -> (Uuid, Duration) {
    let mut body = file_body(&eou.to_string());
    body["name"] = json!(name);
    let at = Instant::now();
    let r = app.post("/raw_data_files/", &body).await;
    let took = at.elapsed();
    assert_eq!(r.status, 201, "{}", r.text);
    (uuid(&r.body["transaction_id"]), took)
}

async fn bulk(app: &TestApp, eou: Uuid, n: usize, tag: &str) -> Uuid {
    let r = app
        .post("/raw_data_files/bulk", &bulk_body(eou, n, tag))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    uuid(&r.body["transaction_id"])
}

/// `singles` single writes from `WRITERS` concurrent writers, then `bulks` bulk ones.
async fn write_backlog(app: &TestApp, eou: Uuid, singles: usize, bulks: usize) -> Vec<Uuid> {
    let writers = (0..WRITERS).map(|w| async move {
        let mut ids = Vec::new();
        for i in (w..singles).step_by(WRITERS) {
            ids.push(write_file(app, eou, &format!("s{i}.fits")).await.0);
        }
        ids
    });
    let mut ids: Vec<Uuid> = join_all(writers).await.concat();
    for b in 0..bulks {
        ids.push(bulk(app, eou, BULK_FILES, &format!("b{b}")).await);
    }
    ids
}

async fn states(conn: &mut MultiplexedConnection, app: &TestApp, txs: &[Uuid]) -> Vec<String> {
    let mut pipe = redis::pipe();
    for tx in txs {
        pipe.hget(app.keys.lifecycle(*tx), "state");
    }
    pipe.query_async(conn).await.expect("lifecycle states")
}

async fn all_in_state(app: &TestApp, txs: &[Uuid], wanted: &str, within: Duration) {
    let conn = app.redis.conn().await;
    eventually(&format!("every transaction {wanted}"), within, || {
        let mut conn = conn.clone();
        async move {
            let s = states(&mut conn, app, txs).await;
            s.iter().all(|s| s == wanted).then_some(())
        }
    })
    .await;
}

/// The overlay record keys and index sets the transactions wrote (from their lifecycles).
async fn overlay_of(app: &TestApp, txs: &[Uuid]) -> (Vec<String>, Vec<String>) {
    let mut conn = app.redis.conn().await;
    let mut pipe = redis::pipe();
    for tx in txs {
        pipe.hget(app.keys.lifecycle(*tx), "records");
    }
    let lists: Vec<Option<String>> = pipe.query_async(&mut conn).await.expect("records");
    let records: Vec<String> = lists
        .iter()
        .flatten()
        .flat_map(|l| serde_json::from_str::<Vec<String>>(l).expect("records list"))
        .map(|short| {
            // `{table}:{id}`: the record key without the site's record prefix.
            let (table, id) = short.split_once(':').expect("table:id");
            app.keys.record_of(table, id)
        })
        .collect();
    let mut pipe = redis::pipe();
    for key in &records {
        pipe.hget(key, "_idx");
    }
    let idx: Vec<Option<String>> = pipe.query_async(&mut conn).await.expect("_idx");
    let indexes: HashSet<String> = idx
        .iter()
        .flatten()
        .flat_map(|l| serde_json::from_str::<Vec<String>>(l).expect("index list"))
        .collect();
    (records, indexes.into_iter().collect())
}

/// No record of `records` exists any more and every index set of `indexes` is empty.
async fn assert_released(app: &TestApp, records: &[String], indexes: &[String]) {
    let mut conn = app.redis.conn().await;
    let mut pipe = redis::pipe();
    for key in records {
        pipe.exists(key);
    }
    let left: Vec<bool> = pipe.query_async(&mut conn).await.expect("exists");
    let left = left.iter().filter(|e| **e).count();
    assert_eq!(left, 0, "{left} of {} overlay records left", records.len());
    let mut pipe = redis::pipe();
    for key in indexes {
        pipe.zcard(key);
    }
    let sizes: Vec<u64> = pipe.query_async(&mut conn).await.expect("zcard");
    assert!(
        sizes.iter().all(|s| *s == 0),
        "index sets emptied: {sizes:?}"
    );
}

async fn used_memory(app: &TestApp) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

async fn forwarded_left(app: &TestApp) -> u64 {
    redis::cmd("ZCARD")
        .arg(app.keys.forwarded())
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("ZCARD")
}

/// Slow-log entries kept: more than a backlog's calls over 1 ms.
const SLOW_LOG_LEN: usize = 10_000;

/// Redis' slow log from now on: every command (script call) slower than 1 ms.
async fn watch_slow_calls(app: &TestApp) {
    slow_log::watch(&mut app.redis.conn().await, SLOW_LOG_LEN)
        .await
        .expect("slowlog config");
}

/// The longest call since `watch_slow_calls`, in µs, and its first arguments (0 and
/// nothing if none took over 1 ms).
async fn slowest_call_micros(app: &TestApp) -> (u64, String) {
    slow_log::slowest(&mut app.redis.conn().await, SLOW_LOG_LEN)
        .await
        .expect("SLOWLOG GET")
        .map_or((0, String::new()), |c| (c.micros, c.head()))
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Sequential single writes until `done` says stop (at least `min` of them); latencies.
async fn trickle<F, Fut>(app: &TestApp, eou: Uuid, min: usize, mut done: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut took = Vec::new();
    let mut i = 0;
    while took.len() < min || !done().await {
        took.push(write_file(app, eou, &format!("t{i}.fits")).await.1);
        i += 1;
    }
    took
}

/// The backlog of a replica outage, replicated and released once the replica is back.
async fn outage_backlog(site: &Site) -> (Vec<Uuid>, Vec<String>, Vec<String>) {
    let app = &site.app;
    site.pg.stop_replica().await;
    let eou = start_obs_unit(app, 1).await.0;
    let txs = write_backlog(app, eou, SINGLES, BULKS).await;
    site.drained(Duration::from_secs(120)).await;
    all_in_state(app, &txs, "forwarded", Duration::from_secs(30)).await;
    let (records, indexes) = overlay_of(app, &txs).await;
    assert_eq!(records.len(), SINGLES + BULKS * BULK_FILES);
    (txs, records, indexes)
}

/// The outage scenario; with `latency`, ingest p99 while the backlog is worked off is held
/// to twice the quiet p99 measured just before.
async fn replica_outage(latency: bool) {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let base = used_memory(app).await;
    let (txs, records, indexes) = outage_backlog(&site).await;
    let peak = used_memory(app).await;
    let trickle_eou = start_obs_unit(app, 1).await.0;
    // Quiet: the tracker has nothing it can mark (its replica is down).
    let quiet = p99(trickle(app, trickle_eou, 300, || async { true }).await);

    watch_slow_calls(app).await;
    let at = Instant::now();
    site.pg.start_replica().await;
    let busy = trickle(app, trickle_eou, 300, || async {
        forwarded_left(app).await == 0
    })
    .await;
    let worked_off = at.elapsed();
    all_in_state(app, &txs, "replicated", Duration::from_secs(60)).await;
    assert_released(app, &records, &indexes).await;

    let (slowest, slowest_call) = slowest_call_micros(app).await;
    let busy = p99(busy);
    // What the backlog added is mostly overlay; what stays is the lifecycles (kept for
    // their retention, without their records lists) and the trickle's own writes.
    let after = used_memory(app).await;
    eprintln!(
        "backlog of {} transactions ({} records) worked off in {worked_off:?}; slowest \
         call {slowest} µs ({slowest_call}); p99 quiet {quiet:?}, busy {busy:?}; used_memory base {base}, \
         peak {peak}, after {after}",
        txs.len(),
        records.len()
    );
    // The slowest call is reported, not asserted: a call does about 900 commands at most
    // (under 3 ms alone, 215 ms before the chunking), but on a loaded 2-core machine any
    // call can take 20 ms or more. The bound is checked where timings belong, by
    // `bench outage`'s slow log; what a test can hold to is the ratio below, in one run.
    let added = peak.saturating_sub(base);
    assert!(
        after <= base + added / 2,
        "used_memory: base {base}, peak {peak}, after {after}"
    );
    if latency {
        assert!(
            busy <= quiet * 2,
            "ingest p99 while the backlog is worked off: {busy:?}, quiet: {quiet:?}"
        );
    }
    site.app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_outage_backlog_is_replicated_and_released() {
    replica_outage(false).await;
}

/// Latency is only comparable on a machine doing nothing else: run alone with
/// `cargo test --test it backlog -- --ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "timing: run alone, the rest of the suite skews the p99s"]
async fn a_replica_outage_backlog_keeps_ingest_p99_within_twice_the_quiet_p99() {
    replica_outage(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_replica_tracker_between_chunks_loses_and_duplicates_nothing() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    site.pg.stop_replica().await;
    let eou = start_obs_unit(app, 1).await.0;
    let txs = write_backlog(app, eou, 2_000, 2).await;
    site.drained(Duration::from_secs(60)).await;
    all_in_state(app, &txs, "forwarded", Duration::from_secs(30)).await;
    let (records, indexes) = overlay_of(app, &txs).await;

    site.pg.start_replica().await;
    // Each kill lands as soon as a chunk has been marked: inside a poll's run of calls.
    let mut kills = 0u32;
    let mut left = forwarded_left(app).await;
    while left > 0 {
        left = eventually("a chunk is marked", Duration::from_secs(20), || async {
            let now = forwarded_left(app).await;
            (now < left).then_some(now)
        })
        .await;
        if left > 0 && app.tree.kill("replica").await {
            kills += 1;
        }
        eventually("the tracker restarted", Duration::from_secs(10), || async {
            app.tree.health.is_running("replica").then_some(())
        })
        .await;
    }
    assert!(kills >= 2, "the drill killed the tracker ({kills} kills)");
    all_in_state(app, &txs, "replicated", Duration::from_secs(60)).await;
    assert_released(app, &records, &indexes).await;
    assert_eq!(forwarded_left(app).await, 0, "nothing left to mark");
    site.app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_one_release_is_released_whole_when_replicated() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let eou = start_obs_unit(app, 1).await.0;
    site.pg.stop_replica().await;
    let tx = bulk(app, eou, BULK_FILES, "big").await;
    all_in_state(app, &[tx], "forwarded", Duration::from_secs(30)).await;
    let (records, indexes) = overlay_of(app, &[tx]).await;
    assert_eq!(records.len(), BULK_FILES);
    site.pg.start_replica().await;
    all_in_state(app, &[tx], "replicated", Duration::from_secs(30)).await;
    assert_released(app, &records, &indexes).await;
    site.app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_transaction_larger_than_one_release_is_released_whole_and_dead_lettered_once() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    // The link is down until the overlay has been looked at: settling must come after.
    wan.cut();
    // An obs unit the primary has never seen: the foreign key rejects the whole bulk.
    let tx = bulk(app, Uuid::now_v7(), BULK_FILES, "orphan").await;
    let (records, indexes) = overlay_of(app, &[tx]).await;
    assert_eq!(records.len(), BULK_FILES);
    wan.heal();
    all_in_state(app, &[tx], "dead", Duration::from_secs(30)).await;
    assert_released(app, &records, &indexes).await;
    let dead = site.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["transaction_id"], tx.to_string());
    site.app.stop().await.expect("clean stop");
}

/// One start-observation (obs unit 1) forwarded while the replica is stopped: its executed
/// obs unit's id, its transaction and its record's key.
async fn forwarded_while_the_replica_is_stopped(site: &Site) -> (Uuid, Uuid, String) {
    let app = &site.app;
    site.pg.stop_replica().await;
    let (eou, tx) = start_obs_unit(app, 1).await;
    all_in_state(app, &[tx], "forwarded", Duration::from_secs(30)).await;
    (
        eou,
        tx,
        app.keys.record_of("executed_obs_unit", &eou.to_string()),
    )
}

/// Sets `field` of the hash `key` to `older` (as an older build wrote it), after checking
/// that it holds `now` (as this build writes it).
async fn write_as_before(
    conn: &mut MultiplexedConnection,
    key: &str,
    field: &str,
    now: Value,
    older: Value,
) {
    let listed: String = redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .expect("hget");
    assert_eq!(listed, now.to_string(), "{key} {field}");
    let () = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(older.to_string())
        .query_async(conn)
        .await
        .expect("hset");
}

/// Whether the index set `index` holds `id`.
async fn holds(conn: &mut MultiplexedConnection, index: &str, id: Uuid) -> bool {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(index)
        .arg(id.to_string())
        .query_async(conn)
        .await
        .expect("zscore");
    score.is_some()
}

/// Starts the replica again: once `tx` is replicated, `record` must be gone.
async fn released(site: &Site, tx: Uuid, record: &str) {
    site.pg.start_replica().await;
    all_in_state(&site.app, &[tx], "replicated", Duration::from_secs(30)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(record)
        .query_async(&mut site.app.redis.conn().await)
        .await
        .expect("exists");
    assert!(!exists, "{record} left after replication");
}

/// A lifecycle written before the lists were shortened lists whole record keys (upgrading
/// with transactions in flight); its records are released all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_lifecycle_listing_whole_record_keys_as_before_is_released_all_the_same() {
    let site = Site::start(false, |_| {}).await;
    let (eou, tx, record) = forwarded_while_the_replica_is_stopped(&site).await;
    let mut conn = site.app.redis.conn().await;
    let now = json!([format!("executed_obs_unit:{eou}")]);
    let lifecycle = site.app.keys.lifecycle(tx);
    write_as_before(&mut conn, &lifecycle, "records", now, json!([record])).await;
    released(&site, tx, &record).await;
    site.app.stop().await.expect("clean stop");
}

/// A record's `_idx` names its index sets short (`{column}:{value}`); one written before
/// that, naming whole keys (upgrading with records in the overlay), is released all the
/// same: the record and its index entry go.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_list_of_whole_keys_as_before_is_released_all_the_same() {
    let site = Site::start(false, |_| {}).await;
    let (eou, tx, record) = forwarded_while_the_replica_is_stopped(&site).await;
    let index = site
        .app
        .keys
        .index_of("executed_obs_unit", "obs_unit_id", "1");
    let mut conn = site.app.redis.conn().await;
    assert!(holds(&mut conn, &index, eou).await, "{index} lacks {eou}");
    let now = json!(["obs_unit_id:1"]);
    write_as_before(&mut conn, &record, "_idx", now, json!([index])).await;
    released(&site, tx, &record).await;
    assert!(
        !holds(&mut conn, &index, eou).await,
        "{index} still holds {eou}"
    );
    site.app.stop().await.expect("clean stop");
}

/// A release split over calls goes on from `records_at` (`{position}:{length}`): what is
/// before the position counts as released. A position beside a list of another length
/// (an older build rewrote the list) is not trusted: the list is read from its start.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_goes_on_from_its_position_unless_the_list_is_not_the_one_it_was_for() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    site.pg.stop_replica().await;
    let eou = start_obs_unit(app, 1).await.0;
    let honoured = bulk(app, eou, 3, "honoured").await;
    let stale = bulk(app, eou, 3, "stale").await;
    all_in_state(
        app,
        &[honoured, stale],
        "forwarded",
        Duration::from_secs(30),
    )
    .await;
    let mut conn = app.redis.conn().await;
    let mut first_of = Vec::new();
    for (tx, length_delta) in [(honoured, 0), (stale, 1)] {
        let listed: String = redis::cmd("HGET")
            .arg(app.keys.lifecycle(tx))
            .arg("records")
            .query_async(&mut conn)
            .await
            .expect("records");
        let keys: Vec<String> = serde_json::from_str(&listed).expect("a list");
        assert_eq!(keys.len(), 3, "{listed}");
        // Lua's positions count from 1: the second item's opening quote.
        let second = listed.find(",\"").expect("two items") + 2;
        let at = format!("{second}:{}", listed.len() + length_delta);
        let () = redis::cmd("HSET")
            .arg(app.keys.lifecycle(tx))
            .arg("records_at")
            .arg(at)
            .query_async(&mut conn)
            .await
            .expect("hset");
        let (table, id) = keys[0].split_once(':').expect("{table}:{id}");
        first_of.push(app.keys.record_of(table, id));
    }
    site.pg.start_replica().await;
    all_in_state(
        app,
        &[honoured, stale],
        "replicated",
        Duration::from_secs(30),
    )
    .await;
    for (record, kept) in first_of.iter().zip([true, false]) {
        let exists: bool = redis::cmd("EXISTS")
            .arg(record)
            .query_async(&mut conn)
            .await
            .expect("exists");
        assert_eq!(
            exists, kept,
            "{record}: kept only where the position was honoured"
        );
    }
    for tx in [honoured, stale] {
        let left: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(app.keys.lifecycle(tx))
            .arg("records")
            .arg("records_at")
            .query_async(&mut conn)
            .await
            .expect("hmget");
        assert_eq!(left, vec![None, None], "the list and its position are gone");
    }
    site.app.stop().await.expect("clean stop");
}
