//! Heal detection: after an outage of any length, forwarding resumes within about a second
//! of the link coming back, and marking transactions replicated within about a second of the
//! replica answering again, however long the forwarder's or the tracker's backoff has grown.

use std::time::{Duration, Instant};

use ops_db_service::config::RestartPolicy;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

/// A cap far longer than the bound below, so that sitting out the backoff would fail.
fn restart(policy: &mut RestartPolicy) {
    policy.backoff_base = Duration::from_millis(250);
    policy.backoff_cap = Duration::from_secs(6);
    policy.reset_after = Duration::from_secs(60);
}

/// From the heal to the first batch committed: one probe interval (250 ms), the probe's
/// round trip, a connect and one batch, with room for a shared machine.
const DRAIN_STARTS_WITHIN: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread")]
async fn after_a_long_cut_the_backlog_starts_draining_within_1_5_s_of_the_heal() {
    let site = Site::start(true, |c| {
        c.forwarder.batch_size = 100;
        restart(&mut c.forwarder.restart);
    })
    .await;
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

/// The replica tracker's restart policy: a cap far longer than the bound below, so that
/// sitting out the backoff would fail.
fn replica_restart(policy: &mut RestartPolicy) {
    policy.backoff_base = Duration::from_millis(250);
    policy.backoff_cap = Duration::from_secs(8);
    policy.reset_after = Duration::from_secs(60);
}

/// From the replica showing the missed commits replayed to all of them marked: one probe
/// interval (100 ms), the probe's connect and query, the tracker's connect and first poll,
/// with room for a loaded machine (as the forwarder's bound above). Measured from the
/// replay, not from the replica accepting sessions: how long it takes to stream and replay
/// what it missed is the replica's business, not the tracker's.
const MARKING_RESUMES_WITHIN: Duration = Duration::from_millis(1500);

/// The transactions' lifecycle states, as Redis holds them.
async fn states(app: &TestApp, txs: &[Uuid]) -> Vec<Option<String>> {
    let mut pipe = redis::pipe();
    for tx in txs {
        pipe.hget(app.keys.lifecycle(*tx), "state");
    }
    pipe.query_async(&mut app.redis.conn().await)
        .await
        .expect("states")
}

async fn all_in_state(app: &TestApp, txs: &[Uuid], wanted: &str, within: Duration) {
    eventually(&format!("every transaction {wanted}"), within, || async {
        let states = states(app, txs).await;
        states
            .iter()
            .all(|s| s.as_deref() == Some(wanted))
            .then_some(())
    })
    .await;
}

/// When the replica first accepts a session, and when it first shows `lsn` replayed. An
/// attempt is started every 10 ms, each bounded by 1 s: a connect through Docker's port
/// proxy to a container still starting can hang, and must not hide the moment the
/// replica answers.
async fn watch_replica(url: String, lsn: String) -> (Instant, Instant) {
    let mut attempts = tokio::task::JoinSet::new();
    let mut accepted: Option<Instant> = None;
    loop {
        let (url, lsn) = (url.clone(), lsn.clone());
        attempts.spawn(async move {
            let attempt = async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                let at = Instant::now();
                let replayed: Option<bool> =
                    sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                        .bind(&lsn)
                        .fetch_one(&mut conn)
                        .await
                        .ok()?;
                Some((at, replayed == Some(true)))
            };
            tokio::time::timeout(Duration::from_secs(1), attempt)
                .await
                .ok()
                .flatten()
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Some(done) = attempts.try_join_next() {
            if let Ok(Some((at, replayed))) = done {
                let first = *accepted.get_or_insert(at);
                if replayed {
                    return (first.min(at), at);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_long_replica_outage_marking_resumes_within_1_5_s_of_the_replica_answering() {
    let site = Site::start(false, |c| replica_restart(&mut c.replica.restart)).await;
    let app = &site.app;
    let (eou, first) = start_obs_unit(app, 7).await;
    all_in_state(app, &[first], "replicated", Duration::from_secs(30)).await;

    site.pg.stop_replica().await;
    let mut txs = Vec::new();
    for i in 0..20 {
        let mut body = file_body(&eou.to_string());
        body["name"] = json!(format!("f{i}.fits"));
        let r = app.post("/raw_data_files/", &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        txs.push(uuid(&r.body["transaction_id"]));
    }
    all_in_state(app, &txs, "forwarded", Duration::from_secs(30)).await;
    // 250 ms, 500 ms, 1 s, 2 s, 4 s, then 8 s: from the sixth restart on, each backoff is
    // drawn from the whole capped range.
    eventually(
        "the replica tracker's backoff reaches its cap",
        Duration::from_secs(90),
        || async { (app.tree.health.get("replica")?.restarts >= 6).then_some(()) },
    )
    .await;
    assert_eq!(
        states(app, &txs).await,
        vec![Some("forwarded".to_owned()); txs.len()],
        "nothing is marked while the replica is down"
    );

    let lsn = site.pg.current_lsn().await;
    let watch = tokio::spawn(watch_replica(site.pg.replica_url(), lsn));
    site.pg.start_replica().await;
    let (accepted, replayed) = watch.await.expect("watch");
    all_in_state(app, &txs, "replicated", Duration::from_secs(30)).await;
    let marked = Instant::now();
    println!(
        "replica accepted sessions, showed the commits replayed {:?} later; all marked {:?} \
         after that",
        replayed - accepted,
        marked - replayed
    );
    assert!(
        marked - replayed <= MARKING_RESUMES_WITHIN,
        "marked {:?} after the replica showed the commits replayed ({:?} after it accepted \
         sessions)",
        marked - replayed,
        marked - accepted
    );
}
