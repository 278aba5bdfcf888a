//! A batch retried while its previous attempt still runs on the primary: no false dead
//! letters, and no attempt left running on the primary after the forwarder gave up on it.

use std::time::Duration;

use ops_db_actors::forwarder::PERMANENT_SQLSTATES;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, start_obs_unit};
use crate::site::Site;

/// A one-transaction batch starting an executed obs unit.
fn batch(tx: Uuid, eou: Uuid) -> String {
    json!([{
        "id": tx,
        "site": "summit",
        "op": "start_executed_obs_unit",
        "stream_id": "1-0",
        "steps": [{
            "table": "executed_obs_unit",
            "kind": "insert",
            "values": {
                "id": eou,
                "obs_unit_id": 1,
                "status": "running",
                "start_time": "2026-11-25T00:00:00Z",
            },
        }],
    }])
    .to_string()
}

async fn apply(conn: &mut PgConnection, batch: &str) -> String {
    let permanent: Vec<String> = PERMANENT_SQLSTATES.iter().map(|s| s.to_string()).collect();
    sqlx::query_scalar("SELECT outcome FROM opsdb_api.apply_batch($1::jsonb, $2)")
        .bind(batch)
        .bind(&permanent)
        .fetch_one(conn)
        .await
        .expect("apply")
}

/// Whether some backend is waiting for a lock while running `apply_batch`.
async fn waiting_on_a_lock(url: &str) -> bool {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("connect to the primary");
    sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND query LIKE '%apply_batch%' \
           AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_activity")
}

/// The second attempt waits for the first one's ledger claim: once the first commits, the
/// transaction is `skipped` (it used to run its steps again and die on unique_violation);
/// once the first rolls back, the second applies it.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_retried_while_its_first_attempt_runs_is_skipped_or_applied_never_dead() {
    let pg = Site::primary_with_replica().await;
    for (first_commits, expected) in [(true, "skipped"), (false, "applied")] {
        let (tx, eou) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = batch(tx, eou);
        let mut first = pg.primary().await;
        sqlx::raw_sql("BEGIN").execute(&mut first).await.unwrap();
        assert_eq!(apply(&mut first, &batch).await, "applied");

        let mut second = pg.primary().await;
        let retried = {
            let batch = batch.clone();
            tokio::spawn(async move { apply(&mut second, &batch).await })
        };
        let url = pg.primary_url();
        eventually(
            "the retry waits for the first attempt",
            Duration::from_secs(10),
            || async { waiting_on_a_lock(&url).await.then_some(()) },
        )
        .await;
        let end = if first_commits { "COMMIT" } else { "ROLLBACK" };
        sqlx::raw_sql(end).execute(&mut first).await.unwrap();

        assert_eq!(retried.await.unwrap(), expected, "first attempt: {end}");
        let mut observer = pg.primary().await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM executed_obs_unit WHERE id = $1")
            .bind(eou)
            .fetch_one(&mut observer)
            .await
            .unwrap();
        assert_eq!(rows, 1, "applied exactly once (first attempt: {end})");
        let ledger: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM opsdb_api.applied_transaction WHERE transaction_id = $1",
        )
        .bind(tx)
        .fetch_one(&mut observer)
        .await
        .unwrap();
        assert_eq!(ledger, 1);
    }
}

/// The forwarder's `statement_timeout` holds on the primary too: an attempt the forwarder
/// gave up on is cancelled there, instead of waiting on (and later racing) its retries.
#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_the_forwarder_gave_up_on_does_not_keep_running_on_the_primary() {
    let site = Site::start(false, |c| {
        c.forwarder.statement_timeout = Duration::from_secs(1)
    })
    .await;
    let app = &site.app;
    let (_, first) = start_obs_unit(app, 1).await;
    site.drained(Duration::from_secs(30)).await;

    // Hold a lock every batch needs, for several timeouts.
    let mut holder = site.primary().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE executed_obs_unit IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let (_, second) = start_obs_unit(app, 2).await;
    let url = site.pg.primary_url();
    eventually(
        "a forwarder batch waits for the lock",
        Duration::from_secs(10),
        || async { waiting_on_a_lock(&url).await.then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Every attempt older than the timeout (plus scheduling slack) is gone.
    let mut observer = site.primary().await;
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'ops-db-api forwarder' AND state = 'active' \
           AND now() - query_start > interval '2 seconds'",
    )
    .fetch_one(&mut observer)
    .await
    .unwrap();
    assert_eq!(stale, 0, "attempts the forwarder gave up on still run");
    assert!(
        app.tree.health.get("forwarder").expect("row").restarts >= 2,
        "the forwarder timed out and retried"
    );

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    site.drained(Duration::from_secs(30)).await;
    let mut ledger = site.ledger().await;
    ledger.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ledger, expected, "each applied once");
    assert!(site.dead_letters().await.is_empty());
}
