//! The service under the least-privileged roles of `packaging/postgres/roles.sql`, the
//! file docs/OPERATIONS.md tells operators to run: the forwarder can do nothing on the
//! primary but call the batch function and the heartbeat, the reader nothing but read.

use std::time::Duration;

use ops_db_devkit::local_pg::PgUrl;
use serde_json::json;
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{eventually, file_body, start_obs_unit, uuid};
use crate::pg::TestPg;
use crate::site::{wire, Site};

const ROLES_SQL: &str = include_str!("../../packaging/postgres/roles.sql");

fn as_role(url: PgUrl, role: &str) -> String {
    PgUrl {
        user: role.to_owned(),
        ..url
    }
    .to_string()
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

/// The SQLSTATE `sql` fails with, as `role` on the primary.
async fn refused(pg: &TestPg, role: &str, sql: &str) -> String {
    let mut conn = connect(&as_role(pg.primary_parts(), role)).await;
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

    let primary = as_role(pg.primary_parts(), "opsdb_forwarder");
    let replica = as_role(pg.replica_parts(), "opsdb_reader");
    let site = Site::start_with(std::sync::Arc::clone(&pg), None, move |c| {
        wire(c, &primary, &replica)
    })
    .await;
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
        "SELECT 1 FROM opsdb_api.applied_transaction LIMIT 1",
        "INSERT INTO opsdb_api.applied_transaction (transaction_id, site, stream_id, op) \
         VALUES (gen_random_uuid(), 'x', '0-0', 'x')",
        "DELETE FROM opsdb_api.applied_transaction",
        "SELECT opsdb_api.apply_step('{}'::jsonb, '{}'::jsonb)",
        "SELECT * FROM opsdb_api.apply_rows('[]'::jsonb, ARRAY[]::text[], 0, -1)",
        "SELECT opsdb_api.writable_entry('raw_data_file')",
        "INSERT INTO opsdb_api.writable_table VALUES ('obs_unit', 'public', 'id')",
        "CREATE TABLE intruder (id int)",
        "CREATE TABLE public.intruder (id int)",
        "CREATE TABLE opsdb_api.intruder (id int)",
        "DROP TABLE opsdb_api.applied_transaction",
        "SELECT sha256 FROM opsdb_api.api_token",
        "SELECT 1 FROM opsdb_api.heartbeat",
        "INSERT INTO opsdb_api.heartbeat VALUES ('x', now())",
        "UPDATE opsdb_api.heartbeat SET beat_at = now()",
    ] {
        assert_eq!(refused(&pg, "opsdb_forwarder", sql).await, "42501", "{sql}");
    }
    // The heartbeat, written through its function while the site is idle, as the reader
    // sees it on the replica; the reader sees the WAL receiver's columns
    // (pg_read_all_stats), which are NULL to a role without it.
    let beat = eventually(
        "the heartbeat on the replica",
        Duration::from_secs(30),
        || async {
            let mut reader = connect(&as_role(pg.replica_parts(), "opsdb_reader")).await;
            sqlx::query_scalar::<_, String>(
                "SELECT beat_at::text FROM opsdb_api.heartbeat WHERE site = $1",
            )
            .bind(&app.site)
            .fetch_optional(&mut reader)
            .await
            .expect("the reader reads the heartbeat")
        },
    )
    .await;
    assert!(!beat.is_empty());
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM pg_stat_wal_receiver")
        .fetch_one(&mut connect(&as_role(pg.replica_parts(), "opsdb_reader")).await)
        .await
        .expect("the receiver's row");
    assert_eq!(status.as_deref(), Some("streaming"));
    let freshness = &app.get("/health").await.body["replica"]["freshness"];
    assert_eq!(freshness["receiver_status"], "streaming", "{freshness}");
    assert!(freshness["last_error"].is_null(), "{freshness}");
    // The reader's role: reads only.
    for sql in [
        "SELECT * FROM opsdb_api.apply_batch('[]'::jsonb, ARRAY[]::text[])",
        "INSERT INTO opsdb_api.applied_transaction (transaction_id, site, stream_id, op) \
         VALUES (gen_random_uuid(), 'x', '0-0', 'x')",
        "UPDATE raw_data_file SET name = 'x'",
        "DELETE FROM opsdb_api.writable_table",
        "INSERT INTO opsdb_api.api_token (sha256, name, scopes) \
         VALUES (repeat('a', 64), 'x', ARRAY['admin'])",
        "CREATE TABLE intruder (id int)",
        "CREATE TABLE public.intruder (id int)",
        "CREATE TABLE opsdb_api.intruder (id int)",
        "SELECT opsdb_api.heartbeat('x')",
        "INSERT INTO opsdb_api.heartbeat VALUES ('x', now())",
    ] {
        assert_eq!(refused(&pg, "opsdb_reader", sql).await, "42501", "{sql}");
    }
    // What the reader may read: the allowed tables, their parents, the ledger, the tokens.
    let mut reader = connect(&as_role(pg.primary_parts(), "opsdb_reader")).await;
    for table in [
        "raw_data_file",
        "raw_data_package",
        "executed_obs_unit",
        "obs_unit",
        "opsdb_api.applied_transaction",
        "opsdb_api.api_token",
        "opsdb_api.heartbeat",
    ] {
        sqlx::raw_sql(&format!("SELECT 1 FROM {table} LIMIT 1"))
            .execute(&mut reader)
            .await
            .unwrap_or_else(|e| panic!("the reader may read {table}: {e}"));
    }
    // And PUBLIC lost EXECUTE on the functions: a role of no standing cannot call them,
    // nor see the WAL receiver's details.
    sqlx::raw_sql("CREATE ROLE nobody_special LOGIN")
        .execute(&mut pg.primary().await)
        .await
        .expect("create role");
    assert_eq!(
        refused(
            &pg,
            "nobody_special",
            "SELECT * FROM opsdb_api.apply_batch('[]'::jsonb, ARRAY[]::text[])"
        )
        .await,
        "42501"
    );
    assert_eq!(
        refused(&pg, "nobody_special", "SELECT opsdb_api.heartbeat('x')").await,
        "42501"
    );
    let mut nobody = connect(&as_role(pg.replica_parts(), "nobody_special")).await;
    let (pid, status): (Option<i32>, Option<String>) =
        sqlx::query_as("SELECT pid, status FROM pg_stat_wal_receiver")
            .fetch_one(&mut nobody)
            .await
            .expect("the receiver's row");
    assert!(
        pid.is_some() && status.is_none(),
        "only the pid without pg_read_all_stats"
    );
    site.app.stop().await.expect("clean stop");
}

/// `CREATE OR REPLACE FUNCTION` resets `SECURITY DEFINER` and `SET search_path` unless the
/// new definition states them again: after every migration, the batch function still runs
/// as its owner with the search path pinned to `pg_catalog, pg_temp` (the forwarder's role
/// has no table rights, and a path with a writable schema in it would let another role's
/// objects stand in for ours), and so do its helpers' paths; the heartbeat function too.
/// These two, the forwarder's only entry points, are the only ones that run as the owner.
#[tokio::test]
async fn after_every_migration_the_batch_function_runs_as_its_owner_with_a_pinned_path() {
    let pg = Site::primary_with_replica().await;
    let functions: Vec<(String, bool, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT p.proname::text, p.prosecdef, p.proconfig FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'opsdb_api' \
         ORDER BY 1",
    )
    .fetch_all(&mut pg.primary().await)
    .await
    .expect("the service's functions");
    let names: Vec<&str> = functions.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "apply_batch",
            "apply_rows",
            "apply_step",
            "heartbeat",
            "writable_entry"
        ]
    );
    for (name, definer, config) in &functions {
        assert_eq!(
            *definer,
            name == "apply_batch" || name == "heartbeat",
            "{name}: only the batch function and the heartbeat run as their owner"
        );
        // The batch function also turns JIT off for its own call (see its migration).
        let expected: &[&str] = if name == "apply_batch" {
            &["search_path=pg_catalog, pg_temp", "jit=off"]
        } else {
            &["search_path=pg_catalog, pg_temp"]
        };
        assert_eq!(
            config.clone().unwrap_or_default(),
            expected,
            "{name} lost its pinned search_path"
        );
    }
}
