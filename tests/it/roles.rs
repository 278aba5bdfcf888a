//! The service under the least-privileged roles of `packaging/postgres/roles.sql`, the
//! file docs/OPERATIONS.md tells operators to run: the forwarder can do nothing on the
//! primary but call the batch function, the reader nothing but read.

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{eventually, file_body, start_obs_unit, uuid};
use crate::pg::TestPg;
use crate::site::{Site, FAST_RESTARTS};

const ROLES_SQL: &str = include_str!("../../packaging/postgres/roles.sql");

fn as_role(url: &str, role: &str) -> String {
    url.replace("://opsdb@", &format!("://{role}@"))
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

/// The SQLSTATE `sql` fails with, as `role` on the primary.
async fn refused(pg: &TestPg, role: &str, sql: &str) -> String {
    let mut conn = connect(&as_role(&pg.primary_url(), role)).await;
    match sqlx::raw_sql(sql).execute(&mut conn).await {
        Ok(_) => panic!("{role} may run: {sql}"),
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned()))
            .unwrap_or_else(|| panic!("{role}: {sql}: not a database error: {e}")),
    }
}

#[tokio::test]
async fn the_service_works_under_the_documented_roles_and_they_allow_nothing_else() {
    let pg = Site::primary_with_replica().await;
    sqlx::raw_sql(ROLES_SQL)
        .execute(&mut pg.primary().await)
        .await
        .expect("roles.sql runs as the schema owner");
    pg.wait_for_replay(&pg.current_lsn().await).await;

    let layer = format!(
        "[forwarder]\nprimary_url = \"{}\"\nlinger = \"5ms\"\nconnect_timeout = \"2s\"\n\
         [forwarder.restart]\n{FAST_RESTARTS}\
         [replica]\nurl = \"{}\"\npoll_interval = \"50ms\"\nconnect_timeout = \"2s\"\n\
         [replica.restart]\n{FAST_RESTARTS}",
        as_role(&pg.primary_url(), "opsdb_forwarder"),
        as_role(&pg.replica_url(), "opsdb_reader"),
    );
    let site = Site::start_with(std::sync::Arc::clone(&pg), None, &[&layer]).await;
    let app = &site.app;

    // Writes are applied once and read back from the replica as the reader.
    let (eou, start_tx) = start_obs_unit(app, 4).await;
    let r = app
        .post("/raw_data_files/", &file_body(&eou.to_string()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (file, file_tx) = (uuid(&r.body["id"]), uuid(&r.body["transaction_id"]));
    for tx in [start_tx, file_tx] {
        eventually("replicated", Duration::from_secs(30), || async {
            let r = app.get_auth(&format!("/transactions/{tx}")).await;
            (r.body["state"] == "replicated").then_some(())
        })
        .await;
    }
    let mut ledger = site.ledger().await;
    ledger.sort();
    let mut acked = vec![start_tx, file_tx];
    acked.sort();
    assert_eq!(ledger, acked);
    let r = app.get_auth(&format!("/raw_data_files/{file}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], json!(file.to_string()));
    let health = app.get("/health").await.body;
    assert_eq!(health["forwarder"]["applied"], 2, "{health}");

    // The forwarder's role: the batch function and nothing else.
    for sql in [
        "SELECT 1 FROM raw_data_file LIMIT 1",
        "INSERT INTO applied_transaction (transaction_id, site, stream_id, op) \
         VALUES (gen_random_uuid(), 'x', '0-0', 'x')",
        "DELETE FROM applied_transaction",
        "SELECT opsdb_apply_step('{}'::jsonb)",
        "CREATE TABLE intruder (id int)",
        "DROP TABLE applied_transaction",
        "SELECT sha256 FROM api_token",
    ] {
        assert_eq!(refused(&pg, "opsdb_forwarder", sql).await, "42501", "{sql}");
    }
    // The reader's role: reads only.
    for sql in [
        "SELECT * FROM opsdb_apply_batch('[]'::jsonb, ARRAY[]::text[])",
        "INSERT INTO applied_transaction (transaction_id, site, stream_id, op) \
         VALUES (gen_random_uuid(), 'x', '0-0', 'x')",
        "UPDATE raw_data_file SET name = 'x'",
        "INSERT INTO api_token (sha256, name, scopes) VALUES (repeat('a', 64), 'x', ARRAY['admin'])",
        "CREATE TABLE intruder (id int)",
    ] {
        assert_eq!(refused(&pg, "opsdb_reader", sql).await, "42501", "{sql}");
    }
    // And PUBLIC lost EXECUTE on both functions: a role of no standing cannot call them.
    sqlx::raw_sql("CREATE ROLE nobody_special LOGIN")
        .execute(&mut pg.primary().await)
        .await
        .expect("create role");
    assert_eq!(
        refused(
            &pg,
            "nobody_special",
            "SELECT * FROM opsdb_apply_batch('[]'::jsonb, ARRAY[]::text[])"
        )
        .await,
        "42501"
    );
    site.app.stop().await.expect("clean stop");
}

/// `CREATE OR REPLACE FUNCTION` resets `SECURITY DEFINER` and `SET search_path` unless the
/// new definition states them again: after every migration, the batch function still runs
/// as its owner with the pinned search path (the forwarder's role has no table rights, and
/// an unpinned path would let a caller's objects stand in for ours).
#[tokio::test]
async fn after_every_migration_the_batch_function_runs_as_its_owner_with_a_pinned_path() {
    let pg = Site::primary_with_replica().await;
    let (definer, config): (bool, Option<Vec<String>>) = sqlx::query_as(
        "SELECT prosecdef, proconfig FROM pg_proc WHERE proname = 'opsdb_apply_batch'",
    )
    .fetch_one(&mut pg.primary().await)
    .await
    .expect("the batch function");
    assert!(definer, "opsdb_apply_batch lost SECURITY DEFINER");
    let config = config.unwrap_or_default();
    assert!(
        config.iter().any(|c| c.starts_with("search_path=")),
        "opsdb_apply_batch lost its pinned search_path: {config:?}"
    );
}
