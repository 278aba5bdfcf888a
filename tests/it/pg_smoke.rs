//! The PostgreSQL harness itself: the replica streams from the primary, and keeps doing
//! so across a crash of the primary.
//!
//! Invariant under test: a row committed on the primary is readable on the replica once
//! the replica has replayed up to the primary's WAL position after that commit.

use crate::pg::TestPg;

async fn insert_on_primary(pg: &TestPg, id: i32, note: &str) -> String {
    sqlx::query("INSERT INTO smoke (id, note) VALUES ($1, $2)")
        .bind(id)
        .bind(note)
        .execute(&mut pg.primary().await)
        .await
        .expect("insert on the primary");
    // Read after the commit returned, so the position covers the commit record.
    pg.current_lsn().await
}

async fn note_on_replica(pg: &TestPg, id: i32) -> Option<String> {
    sqlx::query_scalar("SELECT note FROM smoke WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut pg.replica().await)
        .await
        .expect("select on the replica")
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_replica_follows_the_primary_across_a_primary_crash() {
    let pg = TestPg::start().await;
    sqlx::query("CREATE TABLE smoke (id int PRIMARY KEY, note text NOT NULL)")
        .execute(&mut pg.primary().await)
        .await
        .expect("create table on the primary");

    let lsn = insert_on_primary(&pg, 1, "before the crash").await;
    pg.wait_for_replay(&lsn).await;
    assert_eq!(
        note_on_replica(&pg, 1).await.as_deref(),
        Some("before the crash")
    );
    assert!(
        pg.replay_lsn().await.is_some(),
        "the replica reports a replay position"
    );

    pg.kill_primary().await;
    pg.restart_primary().await;
    let lsn = insert_on_primary(&pg, 2, "after the crash").await;
    pg.wait_for_replay(&lsn).await;
    assert_eq!(
        note_on_replica(&pg, 2).await.as_deref(),
        Some("after the crash")
    );
    assert_eq!(
        note_on_replica(&pg, 1).await.as_deref(),
        Some("before the crash"),
        "the first row survived the crash"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_stopped_replica_catches_up_when_started() {
    let pg = TestPg::start().await;
    pg.stop_replica().await;
    sqlx::query("CREATE TABLE smoke (id int PRIMARY KEY, note text NOT NULL)")
        .execute(&mut pg.primary().await)
        .await
        .expect("create table on the primary");
    let lsn = insert_on_primary(&pg, 1, "while the replica was down").await;

    pg.start_replica().await;
    pg.wait_for_replay(&lsn).await;
    assert_eq!(
        note_on_replica(&pg, 1).await.as_deref(),
        Some("while the replica was down")
    );
}
