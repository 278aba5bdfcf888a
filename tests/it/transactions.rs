//! `POST /transactions` (and the TCP op `transactions`): several rows of ops-db's tables,
//! one transaction, checked at ingest against the model registry, applied on the primary
//! all or nothing, dead-lettered as one unit; the presets over an adapted schema; the
//! referential checks.

use std::time::Duration;

use ops_db_actors::overlay::TxState;
use ops_db_service::config::References;
use serde_json::{json, Value};
use sqlx::{Connection as _, Row as _};
use uuid::Uuid;

use crate::helpers::{eventually, tcp_write, tempdir, until_state, uuid};
use crate::site::Site;

const CHECKSUM: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The original's example: start an observation, create its package, register its `files`
/// files, finish it; one transaction with references.
fn observation(files: usize, tag: &str) -> Value {
    let rows: Vec<Value> = (0..files)
        .map(|i| {
            json!({"name": format!("{tag}_{i}.fits"), "relative_path": format!("{tag}/{i}.fits"),
                   "executed_obs_unit_id": {"$ref": "obs"}, "raw_data_package_id": {"$ref": "pkg"},
                   "size": i, "checksum": CHECKSUM, "checksum_algorithm": "sha256",
                   "created_at": "2026-12-05T18:00:00Z"})
        })
        .collect();
    json!({"steps": [
        {"step_id": "obs", "op": "create", "table": "executed_obs_unit",
         "values": {"obs_unit_id": 1, "status": "running", "start_time": "2026-12-05T18:00:00Z",
                    "instrument_module": tag}},
        {"step_id": "pkg", "op": "create", "table": "raw_data_package",
         "values": {"name": format!("{tag}.tar"), "executed_obs_unit_id": {"$ref": "obs"},
                    "status": "building", "created_at": "2026-12-05T18:00:00Z"}},
        {"step_id": "files", "op": "bulk_create", "table": "raw_data_file", "rows": rows},
        {"step_id": "done", "op": "update", "table": "executed_obs_unit", "id": {"$ref": "obs"},
         "values": {"status": "completed", "end_time": "2026-12-05T19:00:00Z"}},
    ]})
}

async fn count(site: &Site, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&mut site.primary().await)
        .await
        .expect(sql)
}

/// What the primary holds of one observation: (executed obs units, packages, files).
async fn landed(site: &Site, obs: Uuid) -> (i64, i64, i64) {
    (
        count(
            site,
            "SELECT count(*) FROM executed_obs_unit WHERE id = $1",
            obs,
        )
        .await,
        count(
            site,
            "SELECT count(*) FROM raw_data_package WHERE executed_obs_unit_id = $1",
            obs,
        )
        .await,
        site.files_on_primary(obs).await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_originals_example_is_one_transaction_through_http_and_tcp() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;

    let r = app.post("/transactions", &observation(1000, "http")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        r.headers.get("x-opsdb-reference-warning").is_none(),
        "every parent is in the transaction or on the replica: {:?}",
        r.headers
    );
    let obs = uuid(&r.body["steps"]["obs"]["id"]);
    assert_eq!(r.body["steps"]["done"]["id"], json!(obs));
    assert_eq!(
        r.body["steps"]["files"]["ids"].as_array().map(Vec::len),
        Some(1000)
    );
    let tx = uuid(&r.body["transaction_id"]);
    assert_eq!(app.buffered().await.len(), 1, "one stream entry");

    // Merged reads see it at once: the update over the buffered insert.
    let read = app.get_auth(&format!("/executed_obs_units/{obs}")).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["status"], "completed");
    assert_eq!(read.body["instrument_module"], "http");
    let life = app.get_auth(&format!("/transactions/{tx}")).await;
    assert_eq!(life.body["op"], "transactions");
    assert_eq!(
        life.body["steps"],
        json!([
            {"step_id": "obs", "op": "create", "table": "executed_obs_unit", "id": obs},
            {"step_id": "pkg", "op": "create", "table": "raw_data_package",
             "id": r.body["steps"]["pkg"]["id"]},
            {"step_id": "files", "op": "bulk_create", "table": "raw_data_file", "rows": 1000},
            {"step_id": "done", "op": "update", "table": "executed_obs_unit", "id": obs},
        ])
    );

    let line = json!({"op": "transactions", "token": app.token, "request_id": 9,
                      "body": observation(3, "tcp")});
    let reply = tcp_write(app.tcp, &line).await;
    assert_eq!(reply["status"], 201, "{reply}");
    assert_eq!(reply["request_id"], 9);
    let tcp_obs = uuid(&reply["body"]["steps"]["obs"]["id"]);
    let tcp_tx = uuid(&reply["body"]["transaction_id"]);

    for t in [tx, tcp_tx] {
        until_state(app, t, TxState::Replicated, Duration::from_secs(60)).await;
    }
    site.assert_exactly_once(&[tx, tcp_tx]).await;
    assert_eq!(landed(&site, obs).await, (1, 1, 1000));
    assert_eq!(landed(&site, tcp_obs).await, (1, 1, 3));
    let status: String = sqlx::query_scalar("SELECT status FROM executed_obs_unit WHERE id = $1")
        .bind(obs)
        .fetch_one(&mut site.primary().await)
        .await
        .expect("status");
    assert_eq!(status, "completed", "the last step ran after the first");
    let replica = app.get_auth(&format!("/executed_obs_units/{obs}")).await;
    assert_eq!(replica.body["sync"]["state"], "replicated");
    assert_eq!(replica.body["status"], "completed");

    // ?wait= as for any write.
    let waited = app
        .post(
            "/transactions?wait=replicated&timeout=30s",
            &observation(2, "waited"),
        )
        .await;
    assert_eq!(waited.status, 201, "{}", waited.text);
    assert_eq!(waited.body["status"], "replicated");
    let unit = uuid(&waited.body["steps"]["obs"]["id"]);
    let read = app.get_auth(&format!("/executed_obs_units/{unit}")).await;
    assert_eq!(read.body["sync"]["state"], "replicated", "{}", read.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_the_primary_refuses_dead_letters_the_whole_transaction_and_nothing_of_it_lands() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    // The last step changes a package nobody made: the primary refuses it (P0002).
    let mut doomed = observation(20, "doomed");
    let stranger = Uuid::now_v7();
    doomed["steps"].as_array_mut().expect("steps").push(
        json!({"step_id": "late", "op": "update", "table": "raw_data_package",
                     "id": stranger, "values": {"status": "complete"}}),
    );
    let r = app.post("/transactions", &doomed).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (doomed_tx, doomed_obs) = (
        uuid(&r.body["transaction_id"]),
        uuid(&r.body["steps"]["obs"]["id"]),
    );
    let r = app.post("/transactions", &observation(5, "after")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (good_tx, good_obs) = (
        uuid(&r.body["transaction_id"]),
        uuid(&r.body["steps"]["obs"]["id"]),
    );

    until_state(app, doomed_tx, TxState::Dead, Duration::from_secs(60)).await;
    until_state(app, good_tx, TxState::Replicated, Duration::from_secs(60)).await;
    assert_eq!(landed(&site, doomed_obs).await, (0, 0, 0), "all or nothing");
    assert_eq!(landed(&site, good_obs).await, (1, 1, 5));
    let letters = site.all_dead_letters().await;
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    assert_eq!(letters[0]["transaction_id"], json!(doomed_tx));
    assert_eq!(letters[0]["sqlstate"], "P0002");
    // Its overlay is undone: the observation it made reads as missing.
    let gone = app
        .get_auth(&format!("/executed_obs_units/{doomed_obs}"))
        .await;
    assert_eq!(gone.status, 404, "{}", gone.text);
    site.assert_exactly_once(&[good_tx]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_are_applied_exactly_once_while_the_forwarder_is_killed() {
    let site = Site::start(false, |c| c.forwarder.batch_size = 7).await;
    let app = &site.app;
    let tree = std::sync::Arc::clone(&app.tree);
    let killer = tokio::spawn(async move {
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            tree.kill("forwarder").await;
        }
    });
    let mut acked = Vec::new();
    let mut observations = Vec::new();
    for i in 0..60 {
        let r = app
            .post_stored("/transactions", &observation(10, &format!("k{i}")))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(uuid(&r.body["transaction_id"]));
        observations.push(uuid(&r.body["steps"]["obs"]["id"]));
    }
    killer.await.expect("killer");
    site.drained(Duration::from_secs(90)).await;
    site.assert_exactly_once(&acked).await;
    for obs in observations {
        assert_eq!(landed(&site, obs).await, (1, 1, 10), "observation {obs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_table_and_column_names_are_refused_at_ingest() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let tables = [
        "raw_data_file; drop table applied_transaction",
        "\"raw_data_file\"",
        "public.raw_data_file",
        "pg_catalog.pg_authid",
        "raw_data_filé",
        "RAW_DATA_FILE",
        "obs_unit",
        "",
    ];
    for table in tables {
        let body = json!({"steps": [{"step_id": "s", "op": "delete", "table": table,
                                     "id": Uuid::now_v7()}]});
        let r = app.post("/transactions", &body).await;
        let e = r.assert_error(422, "unknown_table");
        assert_eq!(e["field"], "steps[0].table", "{table}");
    }
    let columns = [
        "size; drop",
        "\"size\"",
        "f.size",
        "sizé",
        "SIZE",
        "ctid",
        "xmin",
    ];
    for column in columns {
        let body = json!({"steps": [{"step_id": "s", "op": "update", "table": "raw_data_file",
                                     "id": Uuid::now_v7(), "values": {column: 1}}]});
        let r = app.post("/transactions", &body).await;
        let e = r.assert_error(422, "unknown_column");
        assert_eq!(e["field"], format!("steps[0].values.{column}"), "{column}");
    }
    let steps = [
        (
            json!({"step_id": "a", "op": "create", "table": "raw_data_file",
                "values": {"name": "x", "relative_path": "x", "executed_obs_unit_id": {"$ref": "b"},
                           "size": 1, "checksum": "x", "checksum_algorithm": "sha256",
                           "created_at": "2026-12-05T00:00:00Z"}}),
            "unknown_reference",
            "steps[0].values.executed_obs_unit_id",
        ),
        (
            json!({"step_id": "a", "op": "create", "table": "raw_data_file", "values": {"name": "x"}}),
            "missing_value",
            "steps[0].values.relative_path",
        ),
        (
            json!({"step_id": "a", "op": "update", "table": "raw_data_file", "id": Uuid::now_v7(),
                "values": {"size": "big"}}),
            "invalid_value",
            "steps[0].values.size",
        ),
    ];
    for (step, code, field) in steps {
        let r = app.post("/transactions", &json!({"steps": [step]})).await;
        assert_eq!(r.assert_error(422, code)["field"], field, "{}", r.text);
    }
    let twice = json!({"steps": [
        {"step_id": "a", "op": "delete", "table": "raw_data_file", "id": Uuid::now_v7()},
        {"step_id": "a", "op": "delete", "table": "raw_data_file", "id": Uuid::now_v7()}]});
    let r = app.post("/transactions", &twice).await;
    assert_eq!(
        r.assert_error(422, "duplicate_step_id")["field"],
        "steps[1].step_id"
    );
    assert_eq!(
        app.buffered_count().await,
        0,
        "nothing refused was buffered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn presets_adapt_to_another_schema_without_code() {
    let pg = Site::primary_with_replica().await;
    // ops-db's package shape differs: an enum of states, an extra NOT NULL column with a
    // default, another column order.
    let mut primary = sqlx::PgConnection::connect(&pg.primary_url())
        .await
        .expect("primary");
    for ddl in [
        "CREATE TYPE package_state AS ENUM ('WAITING', 'TRANSFERRING', 'ARCHIVED', 'FAILED')",
        "ALTER TABLE raw_data_package DROP CONSTRAINT raw_data_package_status_check",
        "ALTER TABLE raw_data_package ALTER COLUMN status TYPE package_state USING 'WAITING'",
        "ALTER TABLE raw_data_package ADD COLUMN site_code text NOT NULL DEFAULT 'cc'",
        "ALTER TABLE raw_data_package DROP COLUMN relative_path",
        "ALTER TABLE raw_data_package ADD COLUMN relative_path text",
    ] {
        sqlx::query(ddl).execute(&mut primary).await.expect(ddl);
    }
    let dir = tempdir::Dir::new();
    let presets = dir.0.join("presets.toml");
    let text = include_str!("../../config/presets.toml")
        .replace("status = \"building\"", "status = \"WAITING\"")
        .replace("status = \"complete\"", "status = \"ARCHIVED\"");
    std::fs::write(&presets, text).expect("presets file");
    let (primary, replica) = (pg.primary_url(), pg.replica_url());
    let site = Site::start_with(pg, None, move |c| {
        c.forwarder.primary_url = Some(primary.clone());
        c.forwarder.linger = Duration::from_millis(5);
        c.replica.url = Some(replica.clone());
        c.replica.poll_interval = Duration::from_millis(50);
        c.schema.presets = Some(presets.clone());
    })
    .await;
    let app = &site.app;
    let eou = crate::helpers::start_obs_unit(app, 1).await.0;
    let r = app
        .post(
            "/raw_data_package/",
            &json!({"name": "p.tar", "executed_obs_unit_id": eou}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let package = uuid(&r.body["id"]);
    let r = app
        .put(&format!("/raw_data_package/{package}/finalize"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    until_state(
        app,
        uuid(&r.body["transaction_id"]),
        TxState::Replicated,
        Duration::from_secs(60),
    )
    .await;
    let row =
        sqlx::query("SELECT status::text AS status, site_code FROM raw_data_package WHERE id = $1")
            .bind(package)
            .fetch_one(&mut site.primary().await)
            .await
            .expect("the package");
    assert_eq!(row.get::<String, _>("status"), "ARCHIVED");
    assert_eq!(
        row.get::<String, _>("site_code"),
        "cc",
        "the default applies"
    );
    let read = app.get_auth(&format!("/raw_data_package/{package}")).await;
    assert_eq!(read.body["status"], "ARCHIVED");

    // The registry knows the enum: a label it lacks is refused at ingest.
    let wrong = json!({"steps": [{"step_id": "p", "op": "create", "table": "raw_data_package",
        "values": {"name": "q", "executed_obs_unit_id": eou, "status": "building",
                   "created_at": "2026-12-05T00:00:00Z"}}]});
    let r = app.post("/transactions", &wrong).await;
    assert_eq!(
        r.assert_error(422, "invalid_value")["field"],
        "steps[0].values.status"
    );

    // A preset naming a column ops-db lacks is the site's mistake, not the caller's.
    let misfit = dir.0.join("misfit.toml");
    let text = include_str!("../../config/presets.toml")
        .replace("status = \"building\"", "state = \"WAITING\"");
    std::fs::write(&misfit, text).expect("presets file");
    let other = site
        .second_instance(|c| c.schema.presets = Some(misfit.clone()))
        .await;
    let r = other
        .post(
            "/raw_data_package/",
            &json!({"name": "q.tar", "executed_obs_unit_id": eou}),
        )
        .await;
    let e = r.assert_error(500, "preset_misfit");
    assert!(e["message"]
        .as_str()
        .unwrap_or_default()
        .contains("raw_data_package.create"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_found_nowhere_is_reported_at_once_or_refused() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let nobody = Uuid::now_v7();
    let r = app
        .post(
            "/raw_data_files/",
            &crate::helpers::file_body(&nobody.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "warn stores it: {}", r.text);
    let warning = r
        .headers
        .get("x-opsdb-reference-warning")
        .expect("a warning header");
    assert!(
        warning
            .to_str()
            .unwrap_or_default()
            .contains(&nobody.to_string()),
        "{warning:?}"
    );
    // A buffered parent (not yet on the replica) and a replicated one are found.
    let buffered = crate::helpers::start_obs_unit(app, 2).await.0;
    let r = app
        .post(
            "/raw_data_files/",
            &crate::helpers::file_body(&buffered.to_string()),
        )
        .await;
    assert!(
        r.headers.get("x-opsdb-reference-warning").is_none(),
        "{:?}",
        r.headers
    );
    let line = json!({"op": "raw_data_files.create", "token": app.token,
                      "body": crate::helpers::file_body(&nobody.to_string())});
    let reply = tcp_write(app.tcp, &line).await;
    assert_eq!(reply["status"], 201, "{reply}");
    assert!(
        reply["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("executed_obs_unit_id")),
        "{reply}"
    );
    let bad_unit = app
        .post(
            "/executed_obs_units/start",
            &json!({"obs_unit_id": 999_999}),
        )
        .await;
    assert!(
        bad_unit.headers.get("x-opsdb-reference-warning").is_some(),
        "obs_unit is read on the replica"
    );

    // Under reject: 422 naming the field, nothing stored.
    let strict = site
        .second_instance(|c| c.schema.references = References::Reject)
        .await;
    let r = strict
        .post(
            "/raw_data_files/bulk",
            &crate::helpers::bulk_body(nobody, 3, "x"),
        )
        .await;
    assert_eq!(
        r.assert_error(422, "unknown_parent")["field"],
        "[0].executed_obs_unit_id"
    );
    let r = strict
        .post(
            "/raw_data_files/",
            &crate::helpers::file_body(&buffered.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    eventually(
        "the metric counts the warnings",
        Duration::from_secs(5),
        || async {
            let m = app.get("/metrics").await.text;
            m.lines()
                .any(|l| l.starts_with("opsdb_reference_missing_total ") && !l.ends_with(" 0"))
                .then_some(())
        },
    )
    .await;
    site.drained(Duration::from_secs(30)).await;
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM raw_data_file WHERE name LIKE 'x!_%' ESCAPE '!'")
            .fetch_one(&mut site.primary().await)
            .await
            .expect("count");
    assert_eq!(refused, 0, "nothing of the refused bulk was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_replica_down_writes_go_unchecked_and_are_stored() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    // Parents on the primary and the replica, released from the overlay: only the replica
    // could say they exist, and none was looked up yet.
    let (mut units, mut acked) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let r = app
            .post(
                "/executed_obs_units/start?wait=replicated&timeout=30s",
                &json!({"obs_unit_id": 1}),
            )
            .await;
        assert_eq!(r.body["status"], "replicated", "{}", r.text);
        units.push(uuid(&r.body["id"]));
        acked.push(uuid(&r.body["transaction_id"]));
    }
    eventually(
        "the overlay is released",
        Duration::from_secs(30),
        || async {
            let mut redis = app.redis.conn().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("opsdb:{}:rec:*", app.site))
                .query_async(&mut redis)
                .await
                .expect("keys");
            keys.is_empty().then_some(())
        },
    )
    .await;
    site.pg.stop_replica().await;
    for (i, unit) in units.iter().enumerate() {
        let r = app
            .post(
                "/raw_data_files/",
                &crate::helpers::file_body(&unit.to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "write {i}: {}", r.text);
        assert!(
            r.headers.get("x-opsdb-reference-warning").is_none(),
            "unchecked, not missing"
        );
        acked.push(uuid(&r.body["transaction_id"]));
    }
    let metrics = app.get("/metrics").await.text;
    let unchecked: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("opsdb_reference_unchecked_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter");
    assert_eq!(unchecked, 20, "every write counted unchecked:\n{metrics}");
    let missing = metrics
        .lines()
        .find_map(|l| l.strip_prefix("opsdb_reference_missing_total "))
        .map(str::trim);
    assert_eq!(missing, Some("0"));
    site.drained(Duration::from_secs(30)).await;
    site.assert_exactly_once(&acked).await;
    site.pg.start_replica().await;
}
