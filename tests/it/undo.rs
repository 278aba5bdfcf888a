//! Read correctness across dead writers and moved index entries, through the HTTP reads:
//! a dead transaction never hides an earlier acknowledged write of the same record
//! (buffered, forwarded or replicated).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ops_db_actors::domain::Table;
use ops_db_actors::overlay::TxState;
use redis::AsyncCommands;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, start_obs_unit, uuid, TestApp};
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

async fn state_of(app: &TestApp, tx: Uuid) -> TxState {
    let r = app.get_auth(&format!("/transactions/{tx}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    serde_json::from_value(r.body["state"].clone()).expect("a lifecycle state")
}

async fn until_state(app: &TestApp, tx: Uuid, wanted: TxState) {
    eventually(
        &format!("transaction {tx} {wanted}"),
        Duration::from_secs(30),
        || async { (state_of(app, tx).await == wanted).then_some(()) },
    )
    .await;
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
    until_state(&site.app, tx, TxState::Dead).await;
    let dead = site.dead_letters().await;
    assert!(
        dead.iter().any(|d| d["transaction_id"] == json!(tx)),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_updates_never_hide_the_buffered_insert_of_their_record() {
    let site = Site::start(true, "").await;
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
    until_state(app, start, TxState::Forwarded).await;
    reads_started(app, eou, Some(start), TxState::Forwarded).await;

    site.pg.start_replica().await;
    until_state(app, start, TxState::Replicated).await;
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
    let site = Site::start(true, "").await;
    let app = &site.app;
    refuse_ends_before_starts(&site).await;
    let wan = site.wan.as_ref().expect("wan");
    site.pg.stop_replica().await;
    let (eou, start) = start_obs_unit(app, 1).await;
    until_state(app, start, TxState::Forwarded).await;
    wan.cut();
    let finish = doomed_finish(app, eou).await;
    site.pg.start_replica().await;
    until_state(app, start, TxState::Replicated).await;

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
    let site = Site::start(true, "batch_size = 1\n").await;
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
