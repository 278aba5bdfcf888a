//! Cologne restored from a backup: the service notices, and a resend brings back exactly
//! what the primary lost.
//!
//! These tests drive PostgreSQL from the machine's binaries (`LocalPostgres`) whatever
//! the backend: restoring a primary from a base backup and re-cloning its replica need
//! their data directories. Install them with scripts/install-deps.sh (postgresql-15).
//!
//! Invariants under test: a transaction is `replicated` only when the replica's ledger
//! holds it; what the replica's ledger lacks is reported (`/health` `history`, events);
//! a resend sends again exactly what the ledger lacks, and afterwards every acknowledged
//! write is on the primary once.

use std::collections::HashSet;
use std::time::Duration;

use ops_db_actors::history::{History, Identity, Side};
use ops_db_actors::overlay::TxState;
use ops_db_actors::pg::PgTarget;
use ops_db_devkit::local_pg::LocalPostgres;
use ops_db_service::config::Config;
use serde_json::{json, Value};
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, start_obs_unit, tempdir, TestApp, TestRedis};
use crate::site::{prepare, wire};

/// An `XRANGE` reply: entry ids and their fields.
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

struct Restorable {
    app: TestApp,
    pg: LocalPostgres,
    dir: tempdir::Dir,
    /// The executed obs unit the last write made.
    last_unit: std::sync::Mutex<Option<Uuid>>,
}

impl Restorable {
    async fn start(settings: impl FnOnce(&mut Config)) -> Self {
        let dir = tempdir::Dir::new();
        let pg = LocalPostgres::start(&dir.0.join("pg"))
            .await
            .unwrap_or_else(|e| panic!("these tests need PostgreSQL 15's binaries: {e:#}"));
        prepare(&PgTarget::plain(pg.primary_url())).await;
        let app = TestApp::spawn_on(TestRedis::start().await, |c| {
            wire(c, &pg.primary_url(), &pg.replica_url());
            c.replica.audit_interval = Duration::from_millis(500);
            settings(c);
        })
        .await;
        Self {
            app,
            pg,
            dir,
            last_unit: std::sync::Mutex::new(None),
        }
    }

    async fn primary(&self) -> PgConnection {
        PgConnection::connect(&self.pg.primary_url())
            .await
            .expect("connect to the primary")
    }

    /// `n` start-observations; their transaction ids.
    async fn write(&self, n: usize) -> Vec<Uuid> {
        let mut acked = Vec::with_capacity(n);
        for i in 0..n {
            let (unit, tx) = start_obs_unit(&self.app, 1 + (i % 10) as i64).await;
            *self.last_unit.lock().expect("lock") = Some(unit);
            acked.push(tx);
        }
        acked
    }

    async fn states(&self, txs: &[Uuid]) -> Vec<TxState> {
        let mut states = Vec::with_capacity(txs.len());
        for tx in txs {
            let r = self.app.get_auth(&format!("/transactions/{tx}")).await;
            assert_eq!(r.status, 200, "{}", r.text);
            states.push(
                r.body["state"]
                    .as_str()
                    .unwrap_or("")
                    .parse()
                    .expect("a state"),
            );
        }
        states
    }

    async fn all_in(&self, txs: &[Uuid], state: TxState, within: Duration) {
        let what = format!("{} transactions {state:?}", txs.len());
        eventually(&what, within, || async {
            self.states(txs)
                .await
                .iter()
                .all(|s| *s == state)
                .then_some(())
        })
        .await;
    }

    /// The events of `kind` in the site's event stream.
    async fn events(&self, kind: &str) -> Vec<Value> {
        let mut redis = self.app.redis.conn().await;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.app.keys.events())
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .expect("XRANGE events");
        entries
            .into_iter()
            .flat_map(|(_, fields)| fields.into_iter().map(|(_, e)| e))
            .filter_map(|e| serde_json::from_str::<Value>(&e).ok())
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// Moves the primary's WAL past `lsn`: a logical message (WAL, no table) and a segment
    /// switch, as often as it takes.
    async fn wal_past(&self, lsn: &str) {
        let mut primary = self.primary().await;
        for _ in 0..8 {
            let past: bool = sqlx::query_scalar("SELECT pg_current_wal_lsn() > $1::pg_lsn")
                .bind(lsn)
                .fetch_one(&mut primary)
                .await
                .expect("compare LSNs");
            if past {
                return;
            }
            sqlx::query("SELECT pg_logical_emit_message(false, 'test', 'x'), pg_switch_wal()")
                .execute(&mut primary)
                .await
                .expect("switch WAL");
        }
        panic!("the primary's WAL did not pass {lsn}");
    }

    async fn history(&self) -> Value {
        let r = self.app.get("/health").await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["history"].clone()
    }

    async fn resend(&self, since: &str, after: Option<&str>, limit: u64, dry_run: bool) -> Value {
        let body = json!({ "since": since, "after": after, "limit": limit, "dry_run": dry_run });
        let r = self
            .app
            .client
            .post(self.app.url("/admin/resend"))
            .bearer_auth(&self.app.admin_token)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("a JSON answer");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Every step of a resend from `since`, `limit` entries each: the summed counts.
    async fn resend_all(&self, since: &str, limit: u64, dry_run: bool) -> (u64, u64, u64) {
        let (mut scanned, mut in_ledger, mut resent) = (0, 0, 0);
        let mut after: Option<String> = None;
        for _ in 0..1000 {
            let step = self.resend(since, after.as_deref(), limit, dry_run).await;
            assert!(step["scanned"].as_u64().unwrap_or(0) <= limit, "{step}");
            scanned += step["scanned"].as_u64().unwrap_or(0);
            in_ledger += step["in_ledger"].as_u64().unwrap_or(0);
            resent += step["resent"].as_u64().unwrap_or(0);
            match step["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return (scanned, in_ledger, resent),
            }
        }
        panic!("a resend that never ends")
    }

    /// Each transaction in the primary's ledger once, and each executed obs unit it made
    /// once: nothing acknowledged lost, nothing applied twice.
    async fn assert_exactly_once(&self, acked: &[Uuid]) {
        let mut primary = self.primary().await;
        crate::site::assert_exactly_once(&mut primary, acked).await;
        let units: i64 = sqlx::query_scalar("SELECT count(*) FROM executed_obs_unit")
            .fetch_one(&mut primary)
            .await
            .expect("count");
        assert_eq!(
            units as usize,
            acked.len(),
            "one executed obs unit per start"
        );
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The scenario, and its harder half: 100 writes replicated before a base backup
/// (kept), 100 replicated after it (lost after replication), 100 forwarded while the
/// replica was down (lost before confirmation); then the primary is restored from the
/// backup and the replica re-cloned from it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_primary_is_noticed_and_a_resend_brings_back_exactly_what_it_lost() {
    let mut site = Restorable::start(|_| {}).await;
    let since = now();
    let kept = site.write(100).await;
    site.all_in(&kept, TxState::Replicated, Duration::from_secs(60))
        .await;
    let backup = site.dir.0.join("pg").join("backup");
    site.pg.backup_primary(&backup).await.expect("base backup");
    let replicated_then_lost = site.write(100).await;
    site.all_in(
        &replicated_then_lost,
        TxState::Replicated,
        Duration::from_secs(60),
    )
    .await;
    site.pg.stop_replica().await.expect("stop replica");
    let forwarded_then_lost = site.write(100).await;
    site.all_in(
        &forwarded_then_lost,
        TxState::Forwarded,
        Duration::from_secs(60),
    )
    .await;
    let history = site.history().await;
    assert_eq!(history["consistent"], true, "{history}");
    let identity = history["primary"].clone();

    let newest_lost_lsn = {
        let last = forwarded_then_lost.last().expect("a write");
        let r = site.app.get_auth(&format!("/transactions/{last}")).await;
        r.body["commit_lsn"]
            .as_str()
            .expect("a commit LSN")
            .to_owned()
    };
    let lost_unit = site.last_unit.lock().expect("lock").expect("a unit");

    site.pg.restore_primary(&backup).await.expect("restore");
    // The restored primary's WAL goes on from the backup, below the lost commits' LSNs;
    // once past them, the replica's replay position passes LSNs it never saw (the case
    // the LSN alone gets wrong).
    site.wal_past(&newest_lost_lsn).await;
    site.pg
        .reclone_replica()
        .await
        .expect("re-clone the replica");
    let after_restore = site.write(10).await;
    site.all_in(&after_restore, TxState::Replicated, Duration::from_secs(60))
        .await;

    // Reported: the lost ones after replication (audit) and before (not confirmed).
    let history = eventually("both gaps reported", Duration::from_secs(30), || async {
        let h = site.history().await;
        (h["lost"]["missing"] == 100 && h["unconfirmed"]["missing"] == 100).then_some(h)
    })
    .await;
    assert_eq!(history["consistent"], false);
    assert_eq!(
        history["primary"]["system_identifier"], identity["system_identifier"],
        "a restore keeps the cluster's identity: only the ledger shows the loss"
    );
    // Not marked replicated by LSN: they stay forwarded (and in the overlay).
    assert!(site
        .states(&forwarded_then_lost)
        .await
        .iter()
        .all(|s| *s == TxState::Forwarded));
    // The overlay still answers for them.
    let r = site
        .app
        .get_auth(&format!("/executed_obs_units/{lost_unit}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = eventually("the gap events", Duration::from_secs(5), || async {
        let events = site.events("history.ledger_gap").await;
        (events.len() == 2).then_some(events)
    })
    .await;
    let kinds: HashSet<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, HashSet::from(["lost", "unconfirmed"]));

    // A dry run counts and sends nothing.
    let (scanned, in_ledger, resent) = site.resend_all(&since, 64, true).await;
    assert_eq!((scanned, in_ledger, resent), (310, 110, 200));
    assert_eq!(site.app.buffered_count().await, 0);

    // The resend, in steps of 64: exactly the 200 lost ones.
    let (_, _, resent) = site.resend_all(&since, 64, false).await;
    assert_eq!(resent, 200);
    let lost: Vec<Uuid> = [replicated_then_lost.clone(), forwarded_then_lost.clone()].concat();
    site.all_in(&lost, TxState::Replicated, Duration::from_secs(60))
        .await;
    let all: Vec<Uuid> = [kept, lost, after_restore].concat();
    site.assert_exactly_once(&all).await;
    eventually("the gaps close", Duration::from_secs(30), || async {
        (site.history().await["consistent"] == true).then_some(())
    })
    .await;

    // Again: nothing is missing any more, nothing is sent.
    let (_, in_ledger, resent) = site.resend_all(&since, 10_000, false).await;
    assert_eq!((in_ledger, resent), (310, 0));
    site.assert_exactly_once(&all).await;
}

/// The window keeps bodies within its byte bound, counts its bytes exactly, and keeps
/// nothing with `resend.window = "0s"`.
#[tokio::test(flavor = "multi_thread")]
async fn the_resend_window_stays_within_its_bytes_and_counts_them() {
    let site = Restorable::start(|c| c.resend.max_bytes = 20000).await;
    let acked = site.write(300).await;
    site.all_in(&acked, TxState::Replicated, Duration::from_secs(60))
        .await;
    let mut redis = site.app.redis.conn().await;
    let keys = &site.app.keys;
    let counted: u64 = redis::cmd("GET")
        .arg(keys.sent_bytes())
        .query_async(&mut redis)
        .await
        .expect("GET");
    let entries: Entries = redis::cmd("XRANGE")
        .arg(keys.sent())
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .expect("XRANGE");
    let held: usize = entries
        .iter()
        .map(|(_, fields)| {
            fields
                .iter()
                .filter(|(name, _)| name == "z")
                .map(|(_, z)| z.len() + ops_db_actors::resend::ENTRY_OVERHEAD)
                .sum::<usize>()
        })
        .sum();
    assert_eq!(counted as usize, held, "the count is the entries' bytes");
    assert!(counted <= 20_000, "{counted} bytes kept");
    let usage: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keys.sent())
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut redis)
        .await
        .expect("MEMORY USAGE");
    println!(
        "resend window: {} start-observations, {counted} bytes counted ({} per entry), \
         MEMORY USAGE {usage} ({} per entry)",
        entries.len(),
        counted as usize / entries.len(),
        usage as usize / entries.len()
    );
    assert!(
        entries.len() > 20 && entries.len() < 300,
        "{} kept",
        entries.len()
    );
    // The newest are the ones kept.
    let newest = entries.last().expect("an entry");
    let tx = newest
        .1
        .iter()
        .find(|(n, _)| n == "tx")
        .expect("tx")
        .1
        .clone();
    assert_eq!(
        String::from_utf8(tx).expect("utf-8"),
        acked[299].to_string()
    );

    let off = Restorable::start(|c| c.resend.window = Duration::ZERO).await;
    let acked = off.write(20).await;
    off.all_in(&acked, TxState::Replicated, Duration::from_secs(60))
        .await;
    let mut redis = off.app.redis.conn().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(off.app.keys.sent())
        .query_async(&mut redis)
        .await
        .expect("XLEN");
    assert_eq!(len, 0);
}

/// A change of the primary's identity (a promoted standby: another timeline; another
/// cluster) is kept in Redis across restarts, reported, and cleared by an operator.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_of_identity_is_kept_reported_and_cleared() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis.conn().await;
    let events = ops_db_actors::events::EventSink::new(100);
    let before = Identity {
        system_identifier: "7400000000000000001".into(),
        timeline: 1,
    };
    let promoted = Identity {
        timeline: 2,
        ..before.clone()
    };
    let history = History::default();
    let first = history
        .record(
            &mut redis,
            &app.keys,
            Side::Primary,
            before.clone(),
            &events,
        )
        .await
        .expect("record");
    assert!(first.is_none(), "a first identity is no change");
    assert!(history.view().consistent);
    // Another instance (a restart) sees the change against what Redis kept.
    let restarted = History::default();
    let change = restarted
        .record(
            &mut redis,
            &app.keys,
            Side::Primary,
            promoted.clone(),
            &events,
        )
        .await
        .expect("record")
        .expect("a change");
    assert_eq!((change.from, change.to), (before, promoted.clone()));
    let view = restarted.view();
    assert!(!view.consistent);
    assert_eq!(view.changes.len(), 1);
    // And a third sees the unacknowledged change without a new one.
    let third = History::default();
    let again = third
        .record(&mut redis, &app.keys, Side::Primary, promoted, &events)
        .await
        .expect("record");
    assert!(again.is_none());
    assert_eq!(third.view().changes.len(), 1, "kept until acknowledged");
    third
        .clear_changes(&mut redis, &app.keys)
        .await
        .expect("clear");
    assert!(third.view().consistent);
    let kept: Option<String> = redis::cmd("HGET")
        .arg(app.keys.history())
        .arg("primary_change")
        .query_async(&mut redis)
        .await
        .expect("HGET");
    assert_eq!(kept, None);
}

/// A replica promoted in place (a new timeline, the same cluster) is seen at the next audit
/// on the tracker's open session, reported until acknowledged, and announced.
#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_replica_is_a_change_of_timeline_reported_until_cleared() {
    let site = Restorable::start(|_| {}).await;
    let acked = site.write(5).await;
    site.all_in(&acked, TxState::Replicated, Duration::from_secs(60))
        .await;
    let before = site.history().await;
    assert_eq!(before["consistent"], true, "{before}");
    assert_eq!(before["replica"]["timeline"], 1, "{before}");
    let mut replica = PgConnection::connect(&site.pg.replica_url())
        .await
        .expect("connect to the replica");
    sqlx::query("SELECT pg_promote(true, 30)")
        .execute(&mut replica)
        .await
        .expect("promote");
    let history = eventually(
        "the new timeline reported",
        Duration::from_secs(30),
        || async {
            let h = site.history().await;
            (h["changes"].as_array().is_some_and(|c| !c.is_empty())).then_some(h)
        },
    )
    .await;
    let change = &history["changes"][0];
    assert_eq!(change["side"], "replica", "{history}");
    assert_eq!(
        (&change["from"]["timeline"], &change["to"]["timeline"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(
        change["from"]["system_identifier"], change["to"]["system_identifier"],
        "a promotion keeps the cluster"
    );
    assert_eq!(history["consistent"], false);
    let r = site.app.get("/health").await;
    assert_eq!(r.body["status"], "degraded", "{}", r.text);
    let events = eventually("the event", Duration::from_secs(5), || async {
        let events = site.events("history.changed").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0]["side"], "replica");
    // Acknowledged by the operator: consistent again, and it stays so.
    let r = site
        .app
        .client
        .post(site.app.url("/admin/history/clear"))
        .bearer_auth(&site.app.admin_token)
        .send()
        .await
        .expect("request sent");
    assert_eq!(r.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = site.history().await;
    assert_eq!(after["changes"], json!([]), "{after}");
    assert_eq!(after["replica"]["timeline"], 2, "{after}");
}
