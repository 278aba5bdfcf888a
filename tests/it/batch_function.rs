//! The batch function checks every step against the allowlist and the live catalog, never
//! the transaction's JSON alone: forged steps (a table not allowed, hostile table and column
//! names, an unknown kind, a missing row) are `dead` with their SQLSTATE and change nothing,
//! called directly and through the running service.

use std::time::Duration;

use ops_db_actors::forwarder::PERMANENT_SQLSTATES;
use redis::AsyncCommands;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::helpers::{register_file, start_obs_unit, uuid};
use crate::schema::snapshot;
use crate::site::Site;

/// One row per transaction: (outcome, sqlstate).
async fn apply(conn: &mut PgConnection, batch: &Value) -> Vec<(String, Option<String>)> {
    let permanent: Vec<String> = PERMANENT_SQLSTATES.iter().map(|s| s.to_string()).collect();
    sqlx::query_as(
        "SELECT outcome, sqlstate FROM opsdb_api.apply_batch($1::jsonb, $2) ORDER BY idx",
    )
    .bind(batch.to_string())
    .bind(&permanent)
    .fetch_all(conn)
    .await
    .expect("the batch function answers")
}

fn tx(steps: Value) -> Value {
    json!({"id": Uuid::now_v7(), "site": "summit", "op": "forged", "stream_id": "1-0",
           "steps": steps})
}

/// A good transaction: start an executed obs unit.
fn start(eou: Uuid) -> Value {
    tx(
        json!([{"kind": "insert", "table": "executed_obs_unit", "id": eou,
               "values": {"id": eou, "obs_unit_id": 1, "status": "running",
                          "start_time": "2026-12-05T00:00:00Z"}}]),
    )
}

/// A file step of `eou` into `table` with `values` merged over a valid row.
fn file_step(table: &str, eou: Uuid, extra: Value) -> Value {
    let id = Uuid::now_v7();
    let mut values = json!({"id": id, "name": "a.fits", "relative_path": "a/a.fits",
                            "executed_obs_unit_id": eou, "size": 1, "checksum": "c",
                            "checksum_algorithm": "sha256",
                            "created_at": "2026-12-05T00:00:00Z"});
    if let (Some(v), Some(e)) = (values.as_object_mut(), extra.as_object()) {
        v.extend(e.clone());
    }
    json!({"kind": "insert", "table": table, "id": id, "values": values})
}

#[tokio::test]
async fn forged_steps_are_dead_with_their_sqlstate_and_change_nothing() {
    let pg = Site::primary_with_replica().await;
    let mut conn = pg.primary().await;
    sqlx::raw_sql("CREATE TABLE public.x (id int PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .expect("x");
    let eou = Uuid::now_v7();
    assert_eq!(apply(&mut conn, &json!([start(eou)])).await[0].0, "applied");

    let update = |table: &str, id: Value, set: Value| json!({"kind": "update", "table": table, "id": id, "set": set});
    let forged: Vec<(&str, Value, &str)> = vec![
        (
            "not in the allowlist",
            file_step("obs_unit", eou, json!({})),
            "22023",
        ),
        (
            "statement in the name",
            file_step("raw_data_file; drop table x", eou, json!({})),
            "22023",
        ),
        (
            "quoted name",
            file_step("\"raw_data_file\"", eou, json!({})),
            "22023",
        ),
        (
            "qualified name",
            file_step("public.raw_data_file", eou, json!({})),
            "22023",
        ),
        (
            "catalog table",
            file_step("pg_catalog.pg_authid", eou, json!({})),
            "22023",
        ),
        (
            "unicode name",
            file_step("raw_data_fïle", eou, json!({})),
            "22023",
        ),
        ("no table", json!({"kind": "delete", "id": eou}), "22023"),
        (
            "statement in a column",
            file_step(
                "raw_data_file",
                eou,
                json!({"name\" = 'x'; drop table x; --": 1}),
            ),
            "22023",
        ),
        (
            "quoted column",
            file_step("raw_data_file", eou, json!({"\"size\"": 2})),
            "22023",
        ),
        (
            "qualified column",
            file_step("raw_data_file", eou, json!({"raw_data_file.size": 2})),
            "22023",
        ),
        (
            "unicode column",
            file_step("raw_data_file", eou, json!({"sïze": 2})),
            "22023",
        ),
        (
            "unknown kind",
            json!({"kind": "truncate", "table": "raw_data_file", "id": eou}),
            "22023",
        ),
        (
            "id of another row",
            json!({"kind": "insert", "table": "executed_obs_unit", "id": Uuid::now_v7(),
            "values": {"id": Uuid::now_v7(), "obs_unit_id": 1, "status": "running",
                       "start_time": "2026-12-05T00:00:00Z"}}),
            "22023",
        ),
        (
            "id not a key value",
            update(
                "executed_obs_unit",
                json!({"id": eou}),
                json!({"status": "completed"}),
            ),
            "22023",
        ),
        (
            "update of a missing row",
            update(
                "executed_obs_unit",
                json!(Uuid::now_v7()),
                json!({"status": "completed"}),
            ),
            "P0002",
        ),
        (
            "delete of a missing row",
            json!({"kind": "delete", "table": "executed_obs_unit",
            "id": Uuid::now_v7()}),
            "P0002",
        ),
        (
            "delete of a row with children",
            json!({"kind": "delete", "table": "executed_obs_unit",
            "id": eou}),
            "23503",
        ),
    ];
    // Each between two good transactions: only they are applied.
    let file = |name: &str| {
        let mut step = file_step("raw_data_file", eou, json!({}));
        step["values"]["name"] = json!(name);
        tx(json!([step]))
    };
    assert_eq!(
        apply(&mut conn, &json!([file("child.fits")])).await[0].0,
        "applied"
    );
    for (what, step, sqlstate) in forged {
        let before = snapshot(&mut conn, "public").await;
        let ledger_before = ledger_len(&mut conn).await;
        // The forged step comes after a good one in its own transaction: that one goes too.
        let good_first = file_step("raw_data_file", eou, json!({}));
        let (first, bad, last) = (
            file("before.fits"),
            tx(json!([good_first, step])),
            file("after.fits"),
        );
        let batch = json!([first, bad, last]);
        let outcomes = apply(&mut conn, &batch).await;
        assert_eq!(
            outcomes,
            [
                ("applied".to_owned(), None),
                ("dead".to_owned(), Some(sqlstate.to_owned())),
                ("applied".to_owned(), None),
            ],
            "{what}"
        );
        let ledger: Vec<Uuid> = sqlx::query_scalar(
            "SELECT transaction_id FROM opsdb_api.applied_transaction \
             WHERE transaction_id = ANY ($1) ORDER BY transaction_id",
        )
        .bind([uuid(&first["id"]), uuid(&bad["id"]), uuid(&last["id"])])
        .fetch_all(&mut conn)
        .await
        .expect("ledger");
        assert_eq!(
            ledger,
            [uuid(&first["id"]), uuid(&last["id"])],
            "{what}: the ledger"
        );
        assert_eq!(ledger_len(&mut conn).await, ledger_before + 2, "{what}");
        // Without the good transactions' two rows, the domain is as it was.
        let good_rows = sqlx::query("DELETE FROM public.raw_data_file WHERE id = ANY ($1)")
            .bind([
                uuid(&first["steps"][0]["id"]),
                uuid(&last["steps"][0]["id"]),
            ])
            .execute(&mut conn)
            .await
            .expect("the good rows");
        assert_eq!(
            good_rows.rows_affected(),
            2,
            "{what}: the good transactions' rows"
        );
        assert_eq!(
            snapshot(&mut conn, "public").await,
            before,
            "{what}: nothing else changed"
        );
    }
}

async fn ledger_len(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM opsdb_api.applied_transaction")
        .fetch_one(conn)
        .await
        .expect("ledger")
}

/// Keys that are not UUIDs, and deletes: obs_unit (an integer key) allowed for this test.
#[tokio::test]
async fn integer_keys_update_and_delete_through_the_allowlist() {
    let pg = Site::primary_with_replica().await;
    let mut schema = ops_db_service::config::Schema::default();
    schema.tables.push("obs_unit".into());
    ops_db_service::db::migrate(
        &ops_db_actors::pg::PgTarget::plain(pg.primary_url()),
        &schema,
    )
    .await
    .expect("migrate");
    let mut conn = pg.primary().await;
    let batch = json!([
        tx(
            json!([{"kind": "insert", "table": "obs_unit", "id": 42, "values": {"name": "forty-two"}}])
        ),
        tx(
            json!([{"kind": "update", "table": "obs_unit", "id": "42", "set": {"name": "renamed"}}])
        ),
        tx(json!([{"kind": "delete", "table": "obs_unit", "id": 3}])),
    ]);
    let outcomes: Vec<String> = apply(&mut conn, &batch)
        .await
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(outcomes, ["applied", "applied", "applied"]);
    let names: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, name FROM public.obs_unit WHERE id IN (3, 42) ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .expect("obs units");
    assert_eq!(names, [(42, "renamed".to_owned())]);
}

/// A transaction forged into the stream with a hostile table name: the running service
/// dead-letters it with the batch function's reason; everything around it is applied once.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_stream_entry_with_a_hostile_table_is_dead_lettered_and_the_rest_applied_once() {
    let site = Site::start(false, |c| c.forwarder.linger = Duration::from_millis(200)).await;
    let app = &site.app;
    let (eou, t0) = start_obs_unit(app, 5).await;
    let mut acked = vec![t0];
    let mut redis = app.redis.conn().await;
    let forged_id = Uuid::now_v7();
    let mut forged = tx(json!([file_step(
        "raw_data_file; drop table raw_data_package",
        eou,
        json!({})
    )]));
    forged["id"] = json!(forged_id);
    forged["site"] = json!(app.site);
    forged["created_at"] = json!("2026-12-05T00:00:00Z");
    acked.push(register_file(app, eou, "before.fits").await);
    let _: String = redis
        .xadd(app.keys.stream(), "*", &[("tx", forged.to_string())])
        .await
        .expect("xadd");
    acked.push(register_file(app, eou, "after.fits").await);
    site.drained(Duration::from_secs(30)).await;

    site.assert_exactly_once(&acked).await;
    let dead = site.all_dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0]["transaction_id"],
        json!(forged_id.to_string()),
        "{}",
        dead[0]
    );
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not writable through ops-db-api"),
        "{reason}"
    );
    let packages: i64 = sqlx::query_scalar("SELECT count(*) FROM public.raw_data_package")
        .fetch_one(&mut site.primary().await)
        .await
        .expect("the table is still there");
    assert_eq!(packages, 0);
    site.app.stop().await.expect("clean stop");
}
