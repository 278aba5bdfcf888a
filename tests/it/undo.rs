//! Read correctness across dead writers and moved index entries, through the HTTP reads:
//! a dead transaction never hides an earlier acknowledged write of the same record
//! (buffered, forwarded or replicated), and an update of an indexed column moves the
//! record between the lists by that column, before and after replication, and back when
//! it dies.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ops_db_actors::domain::{Step, Table, Transaction};
use ops_db_actors::overlay::{buffer_transaction, TxState};
use ops_db_devkit::slow_log;
use redis::AsyncCommands;
use serde_json::{json, Map, Value};
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{eventually, file_body, start_obs_unit, state_of, until_state, uuid, TestApp};
use crate::site::Site;

/// A finish whose `end_time` is before the start: the primary refuses it for good (a check
/// constraint added for the test, SQLSTATE 23514), so it is dead-lettered.
const END_BEFORE_START: &str = "2001-01-01T00:00:00Z";

async fn refuse_ends_before_starts(site: &Site) {
    sqlx::raw_sql(
        "ALTER TABLE executed_obs_unit ADD CONSTRAINT ends_after_start \
         CHECK (end_time IS NULL OR end_time >= start_time)",
    )
    .execute(&mut site.primary().await)
    .await
    .expect("constraint");
}

/// A finish that will die; its transaction id.
async fn doomed_finish(app: &TestApp, eou: Uuid) -> Uuid {
    let r = app
        .put(
            &format!("/executed_obs_units/{eou}/finish"),
            &json!({"status": "completed", "end_time": END_BEFORE_START}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    uuid(&r.body["transaction_id"])
}

/// Reads one record over and over until stopped, keeping every answer (status, body).
struct Watcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(u16, Value)>>,
}

impl Watcher {
    fn start(app: &TestApp, path: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, url, token) = (app.client.clone(), app.url(path), app.token.clone());
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            // Bounded: about a minute of reads at most.
            for _ in 0..6_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let r = client.get(&url).bearer_auth(&token).send().await;
                let r = r.expect("read sent");
                let status = r.status().as_u16();
                seen.push((status, r.json().await.unwrap_or(Value::Null)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<(u16, Value)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("watcher")
    }
}

/// Every answer is the record: before a `dead` one died, its image or the earlier one;
/// after, the earlier one (started, not ended), never a 404 or an error.
fn assert_never_hidden(seen: &[(u16, Value)], dead: &[Uuid]) {
    assert!(!seen.is_empty());
    for (status, body) in seen {
        assert_eq!(*status, 200, "the record was hidden: {body}");
        let by_dead = dead
            .iter()
            .any(|tx| body["sync"]["transaction_id"] == json!(tx));
        if !by_dead {
            assert_eq!(body["status"], "running", "the earlier image: {body}");
            assert_eq!(body["end_time"], Value::Null, "{body}");
        }
    }
}

/// The dead finish's effect is gone and the record reads as started, from `state`.
async fn reads_started(app: &TestApp, eou: Uuid, writer: Option<Uuid>, state: TxState) {
    let r = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "running", "{}", r.text);
    assert_eq!(r.body["end_time"], Value::Null, "{}", r.text);
    assert_eq!(r.body["sync"]["state"], json!(state), "{}", r.text);
    assert_eq!(
        r.body["sync"]["transaction_id"],
        json!(writer),
        "{}",
        r.text
    );
}

async fn dead_lettered(site: &Site, tx: Uuid) {
    until_state(&site.app, tx, TxState::Dead, Duration::from_secs(30)).await;
    let dead = site.dead_letters().await;
    assert!(
        dead.iter().any(|d| d["transaction_id"] == json!(tx)),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_updates_never_hide_the_buffered_insert_of_their_record() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    refuse_ends_before_starts(&site).await;
    let wan = site.wan.as_ref().expect("wan");
    wan.cut();
    let (eou, start) = start_obs_unit(app, 1).await;
    // Three finishes that will die, one over the other: each folds its undo entry into
    // the ones above it, and the last restores the start's image.
    let mut finishes = Vec::new();
    for _ in 0..3 {
        finishes.push(doomed_finish(app, eou).await);
    }
    let r = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(r.body["status"], "completed", "the latest write shows");

    // The replica is down: the start can be forwarded but not replicated, so the record
    // must come from the overlay once the finish is dead.
    site.pg.stop_replica().await;
    let watcher = Watcher::start(app, &format!("/executed_obs_units/{eou}"));
    wan.heal();
    for finish in &finishes {
        dead_lettered(&site, *finish).await;
    }
    until_state(app, start, TxState::Forwarded, Duration::from_secs(30)).await;
    reads_started(app, eou, Some(start), TxState::Forwarded).await;

    site.pg.start_replica().await;
    until_state(app, start, TxState::Replicated, Duration::from_secs(30)).await;
    let gone = app.keys.record(Table::ExecutedObsUnit, eou);
    eventually(
        "the overlay is released",
        Duration::from_secs(10),
        || async {
            let left: bool = app.redis.conn().await.exists(&gone).await.expect("exists");
            (!left).then_some(())
        },
    )
    .await;
    reads_started(app, eou, None, TxState::Replicated).await;
    assert_never_hidden(&watcher.stop().await, &finishes);
    assert_eq!(site.ledger().await, vec![start], "the start, once");
}

/// The start is forwarded when the finish is buffered over it, then replicated (its
/// release leaves the record: the finish is its latest writer), then the finish dies:
/// the replica answers with the start's row.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_update_never_hides_the_replicated_insert_of_its_record() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    refuse_ends_before_starts(&site).await;
    let wan = site.wan.as_ref().expect("wan");
    site.pg.stop_replica().await;
    let (eou, start) = start_obs_unit(app, 1).await;
    until_state(app, start, TxState::Forwarded, Duration::from_secs(30)).await;
    wan.cut();
    let finish = doomed_finish(app, eou).await;
    site.pg.start_replica().await;
    until_state(app, start, TxState::Replicated, Duration::from_secs(30)).await;

    let watcher = Watcher::start(app, &format!("/executed_obs_units/{eou}"));
    wan.heal();
    dead_lettered(&site, finish).await;
    let gone = app.keys.record(Table::ExecutedObsUnit, eou);
    let left: bool = app.redis.conn().await.exists(&gone).await.expect("exists");
    assert!(!left, "the start is replicated: nothing left to restore");
    reads_started(app, eou, None, TxState::Replicated).await;
    // Replicated first, then a dead update over it (the plain case: a partial image).
    wan.cut();
    let again = doomed_finish(app, eou).await;
    wan.heal();
    dead_lettered(&site, again).await;
    reads_started(app, eou, None, TxState::Replicated).await;
    assert_never_hidden(&watcher.stop().await, &[finish, again]);
    assert_eq!(site.ledger().await, vec![start], "the start, once");
}

/// A start the primary refuses (no such obs unit) under a finish buffered over it: both
/// die (the finish updates a row that never existed), the record reads as it was until
/// then and 404 once the start is dead, and nothing of it is left in Redis.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_insert_under_a_buffered_update_leaves_nothing() {
    let site = Site::start(true, |c| c.forwarder.batch_size = 1).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    wan.cut();
    let (eou, start) = start_obs_unit(app, 424_242).await;
    let r = app
        .put(
            &format!("/executed_obs_units/{eou}/finish"),
            &json!({"status": "completed"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let finish = uuid(&r.body["transaction_id"]);
    let watcher = Watcher::start(app, &format!("/executed_obs_units/{eou}"));
    wan.heal();
    dead_lettered(&site, start).await;
    dead_lettered(&site, finish).await;
    let r = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let seen = watcher.stop().await;
    let first_gone = seen.iter().position(|(s, _)| *s == 404);
    for (i, (status, body)) in seen.iter().enumerate() {
        match first_gone {
            Some(gone) if i >= gone => assert_eq!(*status, 404, "gone for good: {body}"),
            _ => assert_eq!(*status, 200, "{body}"),
        }
    }
    let mut redis = app.redis.conn().await;
    let record = app.keys.record(Table::ExecutedObsUnit, eou);
    let left: bool = redis.exists(&record).await.expect("exists");
    assert!(!left, "the record is released");
    let index = app
        .keys
        .index(Table::ExecutedObsUnit, "obs_unit_id", "424242");
    let members: Vec<String> = redis.zrange(&index, 0, -1).await.expect("zrange");
    assert!(members.is_empty(), "{members:?}");
    assert!(site.ledger().await.is_empty());
}

/// A package; its id and transaction id.
pub(crate) async fn package(app: &TestApp, eou: Uuid, name: &str) -> (Uuid, Uuid) {
    let r = app
        .post(
            "/raw_data_package/",
            &json!({"name": name, "executed_obs_unit_id": eou}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    (uuid(&r.body["id"]), uuid(&r.body["transaction_id"]))
}

pub(crate) async fn file_in(app: &TestApp, eou: Uuid, pkg: Uuid, name: &str) -> (Uuid, Uuid) {
    let mut body = file_body(&eou.to_string());
    body["name"] = json!(name);
    body["raw_data_package_id"] = json!(pkg);
    let r = app.post("/raw_data_files/", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    (uuid(&r.body["id"]), uuid(&r.body["transaction_id"]))
}

/// Buffers an update of a file's package, which no operation builds yet, through the
/// buffer's own script; its transaction id.
async fn move_file(app: &TestApp, file: Uuid, to: Uuid) -> Uuid {
    move_file_and(app, file, to, Vec::new()).await
}

/// As `move_file`, with more steps in the same transaction.
async fn move_file_and(app: &TestApp, file: Uuid, to: Uuid, more: Vec<Step>) -> Uuid {
    let mut set = Map::new();
    set.insert("raw_data_package_id".into(), json!(to));
    let mut steps = vec![Step::Update {
        table: Table::RawDataFile.name().into(),
        id: file.into(),
        set,
    }];
    steps.extend(more);
    let tx = Transaction {
        id: Uuid::now_v7(),
        site: app.site.clone(),
        op: "raw_data_files.create".into(),
        created_at: Utc::now(),
        steps,
    };
    let mut redis = app.redis.conn().await;
    let (status, _) = buffer_transaction(&mut redis, &app.keys, &tx)
        .await
        .expect("buffered");
    assert_eq!(status, "ok");
    tx.id
}

/// The ids of the files `GET /raw_data_package/{pkg}` lists.
pub(crate) async fn files_of(app: &TestApp, pkg: Uuid) -> Vec<Uuid> {
    let r = app.get_auth(&format!("/raw_data_package/{pkg}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["raw_data_files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| uuid(&f["id"]))
        .collect()
}

async fn package_of(app: &TestApp, file: Uuid) -> Value {
    let r = app.get_auth(&format!("/raw_data_files/{file}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["raw_data_package_id"].clone()
}

/// Both packages list exactly these files.
pub(crate) async fn lists(app: &TestApp, (p1, p2): (Uuid, Uuid), in_p1: &[Uuid], in_p2: &[Uuid]) {
    assert_eq!(
        files_of(app, p1).await,
        in_p1,
        "listed by the first package"
    );
    assert_eq!(
        files_of(app, p2).await,
        in_p2,
        "listed by the second package"
    );
}

/// A site with its link up, an executed obs unit, and two packages of it, replicated.
async fn two_packages() -> (Site, Uuid, (Uuid, Uuid)) {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let (eou, _) = start_obs_unit(app, 1).await;
    let (p1, _) = package(app, eou, "p1").await;
    let (p2, p2_tx) = package(app, eou, "p2").await;
    until_state(app, p2_tx, TxState::Replicated, Duration::from_secs(30)).await;
    (site, eou, (p1, p2))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_of_an_indexed_column_moves_the_record_between_lists() {
    let (site, eou, (p1, p2)) = two_packages().await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    // `old` is replicated before it moves (its update is a partial image over the
    // replica's row); `new` is still buffered when it moves (its index entry moves).
    let (old, old_tx) = file_in(app, eou, p1, "old.fits").await;
    until_state(app, old_tx, TxState::Replicated, Duration::from_secs(30)).await;
    wan.cut();
    let (new, _) = file_in(app, eou, p1, "new.fits").await;
    lists(app, (p1, p2), &[old, new], &[]).await;

    let moves = [move_file(app, old, p2).await, move_file(app, new, p2).await];
    lists(app, (p1, p2), &[], &[old, new]).await;
    assert_eq!(package_of(app, old).await, json!(p2));

    // A move that dies (no such package): the file goes back to the first package.
    let (back, _) = file_in(app, eou, p1, "back.fits").await;
    let nowhere = Uuid::now_v7();
    let doomed = move_file(app, back, nowhere).await;
    lists(app, (p1, p2), &[], &[old, new]).await;
    assert_eq!(package_of(app, back).await, json!(nowhere));

    wan.heal();
    for tx in moves {
        until_state(app, tx, TxState::Replicated, Duration::from_secs(30)).await;
    }
    dead_lettered(&site, doomed).await;
    for tx in moves {
        let life = app.keys.lifecycle(tx);
        let undo: bool = app
            .redis
            .conn()
            .await
            .hexists(&life, "undo")
            .await
            .expect("hexists");
        assert!(!undo, "a forwarded move's undo entries are dropped");
    }
    assert_eq!(package_of(app, back).await, json!(p1));
    lists(app, (p1, p2), &[back], &[old, new]).await;
    let mut redis = app.redis.conn().await;
    let stale = app
        .keys
        .index(Table::RawDataFile, "raw_data_package_id", &p1.to_string());
    let members: Vec<String> = redis.zrange(&stale, 0, -1).await.expect("zrange");
    assert!(
        !members.contains(&old.to_string()) && !members.contains(&new.to_string()),
        "no stale index entry: {members:?}"
    );
}

/// A backlog of starts, each under a finish that dies: settled in calls of a few
/// milliseconds (each undo restores a forwarded start), every start applied once and read
/// back as running, nothing of the overlay left once they are replicated.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_dead_updates_is_undone_and_leaves_nothing() {
    const N: usize = 300;
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    refuse_ends_before_starts(&site).await;
    let wan = site.wan.as_ref().expect("wan");
    wan.cut();
    let (mut eous, mut starts, mut finishes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..N {
        let (eou, start) = start_obs_unit(app, 2).await;
        finishes.push(doomed_finish(app, eou).await);
        eous.push(eou);
        starts.push(start);
    }
    site.pg.stop_replica().await;
    slow_log::watch(&mut app.redis.conn().await, 10_000)
        .await
        .expect("slowlog config");
    wan.heal();
    site.drained(Duration::from_secs(60)).await;
    let slowest = slow_log::slowest(&mut app.redis.conn().await, 10_000)
        .await
        .expect("SLOWLOG GET")
        .map_or(0, |c| c.micros);
    eprintln!("{N} dead finishes over forwarded starts: slowest Redis call {slowest} µs");
    // Reported, not asserted (as in backlog.rs): about 3 ms alone, but a loaded 2-core
    // machine stretches any call past 20 ms. The undo is split by the record budget of
    // settle.lua; its time is for `bench outage`'s slow log.
    // Each record is the start's image again, its writer the forwarded start (read in
    // Redis: an HTTP read of an executed obs unit also lists its packages and files,
    // which waits for the stopped replica's connect timeout).
    let mut pipe = redis::pipe();
    for eou in &eous {
        pipe.cmd("HMGET")
            .arg(app.keys.record(Table::ExecutedObsUnit, *eou))
            .arg("_tx")
            .arg("status");
    }
    let images: Vec<(String, String)> = pipe
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("records");
    for (image, start) in images.iter().zip(&starts) {
        assert_eq!(*image, (start.to_string(), "\"running\"".to_owned()));
    }
    reads_started(app, eous[0], Some(starts[0]), TxState::Forwarded).await;
    for finish in &finishes {
        assert_eq!(state_of(app, *finish).await, TxState::Dead);
    }
    site.pg.start_replica().await;
    for start in &starts {
        until_state(app, *start, TxState::Replicated, Duration::from_secs(30)).await;
    }
    let mut pipe = redis::pipe();
    for eou in &eous {
        pipe.exists(app.keys.record(Table::ExecutedObsUnit, *eou));
    }
    let left: Vec<bool> = pipe
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("exists");
    assert!(left.iter().all(|l| !l), "records left in the overlay");
    let mut ledger = site.ledger().await;
    ledger.sort();
    starts.sort();
    assert_eq!(ledger, starts, "every start once, no finish");
}

/// One `POST /transactions` that moves a file to the second package and back, moves
/// another for good, and registers `files` more in the first package (over 50: staged in
/// chunks, the moved files in the first chunk). Its transaction id and the three kinds of
/// files: (moved and back, moved for good, registered).
async fn there_and_back(
    app: &TestApp,
    eou: Uuid,
    (p1, p2): (Uuid, Uuid),
    files: usize,
) -> (Uuid, Uuid, Uuid, Vec<Uuid>) {
    let file = |name: String| {
        json!({"name": name, "relative_path": format!("moves/{name}"), "size": 1,
               "executed_obs_unit_id": eou, "raw_data_package_id": p1,
               "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
               "checksum_algorithm": "sha256", "created_at": "2026-12-06T18:00:00Z"})
    };
    let rows: Vec<Value> = (0..files).map(|i| file(format!("bulk_{i}.fits"))).collect();
    let to = |step: &str, pkg: Uuid| {
        json!({"step_id": step, "op": "update", "table": "raw_data_file", "id": {"$ref": "back"},
               "values": {"raw_data_package_id": pkg}})
    };
    let body = json!({"steps": [
        {"step_id": "back", "op": "create", "table": "raw_data_file", "values": file("back.fits".into())},
        {"step_id": "gone", "op": "create", "table": "raw_data_file", "values": file("gone.fits".into())},
        to("away", p2),
        {"step_id": "moved", "op": "update", "table": "raw_data_file", "id": {"$ref": "gone"},
         "values": {"raw_data_package_id": p2}},
        to("home", p1),
        {"step_id": "files", "op": "bulk_create", "table": "raw_data_file", "rows": rows},
    ]});
    let r = app.post("/transactions", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ids = r.body["steps"]["files"]["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(uuid)
        .collect();
    (
        uuid(&r.body["transaction_id"]),
        uuid(&r.body["steps"]["back"]["id"]),
        uuid(&r.body["steps"]["gone"]["id"]),
        ids,
    )
}

/// `back` is listed by the first package and reads as in it, `gone` by the second, and
/// `back` not by the second (`when`: which check this is).
async fn moved_back_and_away(
    app: &TestApp,
    (p1, p2): (Uuid, Uuid),
    back: Uuid,
    gone: Uuid,
    when: &str,
) {
    assert!(files_of(app, p1).await.contains(&back), "{when}: back home");
    let in_p2 = files_of(app, p2).await;
    assert!(in_p2.contains(&gone), "{when}: moved for good");
    assert!(!in_p2.contains(&back), "{when}: not left there");
    assert_eq!(package_of(app, back).await, json!(p1), "{when}");
}

/// A script sends the index moves it gathered at its end, one command per set: a record
/// moved away and back within one transaction ends where its last move leaves it, in a
/// write of one call and in one staged in chunks (whose removals wait for the commit),
/// before and after replication; and released, nothing is left in the sets.
#[tokio::test(flavor = "multi_thread")]
async fn moves_within_one_transaction_end_where_the_last_one_leaves_the_record() {
    let (site, eou, (p1, p2)) = two_packages().await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    wan.cut();
    let sets = [p1, p2].map(|pkg| {
        app.keys
            .index(Table::RawDataFile, "raw_data_package_id", &pkg.to_string())
    });
    let mut redis = app.redis.conn().await;
    let mut txs = Vec::new();
    for files in [3, 120] {
        let (tx, back, gone, bulk) = there_and_back(app, eou, (p1, p2), files).await;
        let in_p1: BTreeSet<String> = [back].iter().chain(&bulk).map(Uuid::to_string).collect();
        let entries: BTreeSet<String> = redis.zrange(&sets[0], 0, -1).await.expect("zrange");
        assert!(
            entries.is_superset(&in_p1),
            "{files} files: moved back, and the bulk"
        );
        assert!(
            !entries.contains(&gone.to_string()),
            "{files} files: moved away"
        );
        let entries: BTreeSet<String> = redis.zrange(&sets[1], 0, -1).await.expect("zrange");
        assert!(
            entries.contains(&gone.to_string()),
            "{files} files: moved for good"
        );
        assert!(
            !entries.contains(&back.to_string()),
            "{files} files: not left behind"
        );
        // The moved files are the oldest of their lists: on the first page.
        moved_back_and_away(app, (p1, p2), back, gone, &format!("{files} files")).await;
        txs.push((tx, back, gone));
    }
    wan.heal();
    for (tx, back, gone) in txs {
        until_state(app, tx, TxState::Replicated, Duration::from_secs(60)).await;
        moved_back_and_away(app, (p1, p2), back, gone, "replicated").await;
    }
    for set in &sets {
        let members: Vec<String> = redis.zrange(set, 0, -1).await.expect("zrange");
        assert!(
            members.is_empty(),
            "released, no entry is left: {members:?}"
        );
    }
}

/// A write that sets an indexed column to the value it already holds moves no index entry.
/// When the write below it dies and is folded under it, the entry must stay where that
/// column's value puts it: here a file inserted in the first package (still buffered),
/// moved to the second by a transaction that dies, then moved to the second again by one
/// that lives. With the replica paused, the overlay answers for the file until the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_move_under_a_write_of_the_same_value_leaves_the_record_listed() {
    let (site, eou, (p1, p2)) = two_packages().await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    let mut replica = sqlx::PgConnection::connect(&site.pg.replica_url())
        .await
        .expect("replica");
    crate::pg::set_replay(&mut replica, false).await;
    wan.cut();
    let (file, _) = file_in(app, eou, p1, "f.fits").await;
    // Dies at the primary: its second step updates a package that does not exist.
    let mut nowhere = Map::new();
    nowhere.insert("status".into(), json!("complete"));
    let doomed = move_file_and(
        app,
        file,
        p2,
        vec![Step::Update {
            table: Table::RawDataPackage.name().into(),
            id: Uuid::now_v7().into(),
            set: nowhere,
        }],
    )
    .await;
    let again = move_file(app, file, p2).await;
    lists(app, (p1, p2), &[], &[file]).await;

    wan.heal();
    dead_lettered(&site, doomed).await;
    until_state(app, again, TxState::Forwarded, Duration::from_secs(30)).await;
    assert_eq!(package_of(app, file).await, json!(p2));
    lists(app, (p1, p2), &[], &[file]).await;

    crate::pg::set_replay(&mut replica, true).await;
    until_state(app, again, TxState::Replicated, Duration::from_secs(30)).await;
    lists(app, (p1, p2), &[], &[file]).await;
}
