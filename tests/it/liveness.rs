//! Liveness: no backlog, however much of it the primary rejects, and no transaction too
//! slow for the statement timeout, stops forwarding for good. A batch's cost on the
//! primary stays linear in its size whatever fails (each good row is inserted at most
//! three times, each bad one at most twice: see below); a batch that fails without a
//! culprit is split until the culprit is alone, and a lone transaction that keeps timing
//! out is dead-lettered.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::helpers::{
    bulk_body, eventually, file_body, register_file, start_obs_unit, uuid, TestApp,
};
use crate::site::Site;

/// A single registration whose `executed_obs_unit_id` exists nowhere: the primary rejects
/// it for good (foreign key, 23503).
async fn orphan_file(app: &TestApp, name: &str) -> Uuid {
    let mut body = file_body(&Uuid::now_v7().to_string());
    body["name"] = json!(name);
    let r = app.post("/raw_data_files/", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    uuid(&r.body["transaction_id"])
}

async fn bulk(app: &TestApp, eou: Uuid, n: usize, tag: &str) -> Uuid {
    let r = app
        .post_stored("/raw_data_files/bulk", &bulk_body(eou, n, tag))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    uuid(&r.body["transaction_id"])
}

/// Rows ever inserted into `raw_data_file` on the primary, rolled back ones included.
async fn rows_inserted(pg: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'raw_data_file'")
        .fetch_one(pg)
        .await
        .expect("pg_stat_user_tables")
}

/// Once the backlog drained: the ledger holds exactly `good` (each once), the dead-letter
/// queue exactly `bad`, and the primary inserted at most three times the good rows plus
/// twice the bad ones since `before` (the statistics reach the view within a second or
/// so; they count rolled-back inserts too).
///
/// Why three and two: the batch function first applies a batch in set mode, one statement
/// per run of like steps. A run with a bad row fails as a whole (a foreign key is checked
/// at the end of the statement, after every row of the run was inserted) and is rolled
/// back: its good and bad rows were inserted once. Its transactions are then redone in row
/// mode, where a good row is inserted at most twice and a bad one once (the block scheme of
/// `apply_rows`); the good transactions before the run are redone in set mode, once more.
/// So a good row costs at most three inserts, a bad one at most two: still linear, where
/// redoing a batch from its start after each bad row would be quadratic.
async fn assert_outcome(site: &Site, good: &[Uuid], bad: &[Uuid], rows: (i64, i64)) {
    let ledger = site.ledger().await;
    let unique: HashSet<Uuid> = ledger.iter().copied().collect();
    assert_eq!(unique.len(), ledger.len(), "nothing applied twice");
    let good: HashSet<Uuid> = good.iter().copied().collect();
    assert_eq!(unique, good, "every good transaction applied, nothing else");
    let dead: HashSet<Uuid> = site
        .all_dead_letters()
        .await
        .iter()
        .map(|d| uuid(&d["transaction_id"]))
        .collect();
    let bad: HashSet<Uuid> = bad.iter().copied().collect();
    assert_eq!(dead, bad, "exactly the bad ones dead-lettered");

    let (before, good_rows) = rows;
    let bound = 3 * good_rows + 2 * bad.len() as i64;
    let inserted = eventually(
        "the primary's statistics show the inserts",
        Duration::from_secs(30),
        || async {
            let n = rows_inserted(&mut site.primary().await).await - before;
            (n >= good_rows).then_some(n)
        },
    )
    .await;
    assert!(
        inserted <= bound,
        "linear cost: {inserted} rows inserted for {good_rows} good rows and {} bad \
         (at most {bound})",
        bad.len()
    );
}

/// The backlog of the issue: ten bulk registrations of 1,000 valid files, each followed by
/// 30 single registrations whose obs unit exists nowhere, built behind a cut link. Redoing
/// the batch from its start after each dead one would cost the primary millions of rows;
/// it drains within a minute of the heal at the default batch settings.
#[tokio::test(flavor = "multi_thread")]
async fn bulks_mixed_with_unknown_parents_drain_within_a_minute_of_the_heal() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    let (eou, t0) = start_obs_unit(app, 4).await;
    site.drained(Duration::from_secs(30)).await;
    let before = rows_inserted(&mut site.primary().await).await;
    wan.cut();

    let (mut good, mut bad) = (vec![t0], Vec::new());
    for b in 0..10 {
        good.push(bulk(app, eou, 1000, &format!("bulk{b}")).await);
        for i in 0..30 {
            bad.push(orphan_file(app, &format!("orphan_{b}_{i}.fits")).await);
        }
    }
    assert_eq!(app.buffered_count().await, 310);

    wan.heal();
    let healed = Instant::now();
    site.drained(Duration::from_secs(60)).await;
    let took = healed.elapsed();
    assert_outcome(&site, &good, &bad, (before, 10_000)).await;
    let files = site.files_on_primary(eou).await;
    assert_eq!(files, 10_000, "every file once");
    eprintln!(
        "drained {} transactions in {took:?} after the heal",
        good.len() + bad.len()
    );
}

/// 1,000 valid and 1,000 foreign-key-violating registrations, alternating, in one
/// backlog: every good one applied once, every bad one dead-lettered, at linear cost.
#[tokio::test(flavor = "multi_thread")]
async fn interleaved_good_and_bad_transactions_drain_with_exactly_the_bad_ones_dead() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    let (eou, t0) = start_obs_unit(app, 7).await;
    site.drained(Duration::from_secs(30)).await;
    let before = rows_inserted(&mut site.primary().await).await;
    wan.cut();

    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for i in 0..1000 {
        good.push(register_file(app, eou, &format!("good_{i}.fits")).await);
        bad.push(orphan_file(app, &format!("bad_{i}.fits")).await);
    }
    wan.heal();
    site.drained(Duration::from_secs(60)).await;
    good.push(t0);
    assert_outcome(&site, &good, &bad, (before, 1000)).await;
    assert_eq!(app.tree.forwarder_metrics.dead.get(), 1000);
}

/// A trigger makes one registration take longer than the statement timeout. The batches
/// that hold it are cancelled by the primary (nobody to blame), split until it is alone,
/// and after `max_attempts` timeouts alone it is dead-lettered with the reason; everything
/// around it is applied once. `/health` says `timeout`, not `down`, meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_times_out_is_split_until_the_slow_transaction_is_dead_lettered_alone() {
    let site = Site::start(false, |c| {
        c.forwarder.statement_timeout = Duration::from_secs(1);
        c.forwarder.linger = Duration::from_millis(300);
        c.forwarder.max_attempts = 3;
    })
    .await;
    let app = &site.app;
    sqlx::raw_sql(
        "CREATE FUNCTION slow_file() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.name = 'slow.fits' THEN PERFORM pg_sleep(5); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow_file BEFORE INSERT ON raw_data_file \
           FOR EACH ROW EXECUTE FUNCTION slow_file();",
    )
    .execute(&mut site.primary().await)
    .await
    .expect("trigger");
    let (eou, t0) = start_obs_unit(app, 9).await;
    site.drained(Duration::from_secs(30)).await;

    let mut good = vec![t0];
    for i in 0..40 {
        good.push(register_file(app, eou, &format!("a{i}.fits")).await);
    }
    let slow = register_file(app, eou, "slow.fits").await;
    for i in 0..40 {
        good.push(register_file(app, eou, &format!("b{i}.fits")).await);
    }
    let health = eventually(
        "/health shows the timeout and the split",
        Duration::from_secs(30),
        || async {
            let r = app.get("/health").await;
            let f = r.body["forwarder"].clone();
            // The link is set by the forwarder as it fails; the failure is recorded by its
            // supervisor a moment later, so both are waited for.
            let recorded = f["last_failure"]["reason"].is_string();
            (f["link"] == "timeout" && f["batch_limit"].is_u64() && recorded).then_some(f)
        },
    )
    .await;
    let reason = health["last_failure"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("statement timeout"), "{health}");

    site.drained(Duration::from_secs(90)).await;
    let ledger = site.ledger().await;
    assert_eq!(ledger.len(), good.len(), "nothing applied twice");
    assert_eq!(
        ledger.into_iter().collect::<HashSet<_>>(),
        good.iter().copied().collect(),
        "every other transaction applied"
    );
    let dead = site.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(uuid(&dead[0]["transaction_id"]), slow);
    assert_eq!(dead[0]["sqlstate"], "57014");
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("did not finish within forwarder.statement_timeout")
            && reason.contains("failed 3 times in a row"),
        "{reason}"
    );

    // Whole batches again, and the link is up.
    let later = register_file(app, eou, "later.fits").await;
    site.drained(Duration::from_secs(30)).await;
    assert!(site.ledger().await.contains(&later));
    let r = app.get("/health").await;
    assert_eq!(r.body["forwarder"]["link"], "up", "{}", r.text);
    assert!(r.body["forwarder"]["batch_limit"].is_null(), "{}", r.text);
}
