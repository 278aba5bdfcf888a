//! Writes over HTTP are acknowledged only once durable, with summit-generated ids, and
//! land in the stream, the lifecycle and the overlay in one piece.

use std::collections::HashMap;

use ops_db_actors::domain::{Step, Table};
use ops_db_actors::overlay::TxState;
use redis::AsyncCommands;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{file_body, uuid, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn every_write_endpoint_round_trips_into_the_stream_in_order() {
    let app = TestApp::spawn().await;

    let start = app
        .post(
            "/executed_obs_units/start",
            &json!({"obs_unit_id": 7, "instrument_module": "prime-cam"}),
        )
        .await;
    assert_eq!(start.status, 201, "{}", start.text);
    assert_eq!(start.body["status"], "buffered");
    let eou = uuid(&start.body["id"]);
    let start_tx = uuid(&start.body["transaction_id"]);
    assert_eq!(
        eou.get_version_num(),
        7,
        "summit ids are time-ordered UUIDv7"
    );

    let package = app
        .post(
            "/raw_data_package/",
            &json!({"name": "pkg-1", "executed_obs_unit_id": eou}),
        )
        .await;
    assert_eq!(package.status, 201, "{}", package.text);
    let pkg = uuid(&package.body["id"]);

    let mut one = file_body(&eou.to_string());
    one["raw_data_package_id"] = json!(pkg);
    let file = app.post("/raw_data_files/", &one).await;
    assert_eq!(file.status, 201, "{}", file.text);

    let files: Vec<_> = (0..3)
        .map(|i| {
            let mut f = file_body(&eou.to_string());
            f["name"] = json!(format!("bulk_{i}.fits"));
            f
        })
        .collect();
    let bulk = app.post("/raw_data_files/bulk", &json!(files)).await;
    assert_eq!(bulk.status, 201, "{}", bulk.text);
    assert_eq!(bulk.body["count"], 3);
    let bulk_ids: Vec<Uuid> = bulk.body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(uuid)
        .collect();

    let finalize = app
        .put(
            &format!("/raw_data_package/{pkg}/finalize"),
            &json!({"size": 4096, "file_count": 4}),
        )
        .await;
    assert_eq!(finalize.status, 200, "{}", finalize.text);
    let finish = app
        .put(
            &format!("/executed_obs_units/{eou}/finish"),
            &json!({"status": "completed"}),
        )
        .await;
    assert_eq!(finish.status, 200, "{}", finish.text);
    assert_eq!(uuid(&finish.body["id"]), eou);

    let buffered = app.buffered().await;
    let ops: Vec<&str> = buffered.iter().map(|t| t.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "executed_obs_units.start",
            "raw_data_package.create",
            "raw_data_files.create",
            "raw_data_files.bulk",
            "raw_data_package.finalize",
            "executed_obs_units.finish",
        ],
        "acknowledgement order is stream order"
    );
    assert_eq!(buffered[0].id, start_tx);
    assert!(buffered.iter().all(|t| t.site == app.site));
    let bulk_steps: Vec<Uuid> = buffered[3]
        .steps
        .iter()
        .filter_map(|s| s.id().as_uuid())
        .collect();
    assert_eq!(
        bulk_steps, bulk_ids,
        "one transaction, steps in request order"
    );
    assert!(
        matches!(&buffered[5].steps[0], Step::Update { table, id, set }
        if table == "executed_obs_unit" && id.as_uuid() == Some(eou) && set["status"] == "completed")
    );

    let mut conn = app.redis.conn().await;
    let life: HashMap<String, String> = conn
        .hgetall(app.keys.lifecycle(start_tx))
        .await
        .expect("lifecycle");
    assert_eq!(
        life.get("state").map(|s| s.parse()),
        Some(Ok(TxState::Buffered))
    );
    assert_eq!(
        life.get("op").map(String::as_str),
        Some("executed_obs_units.start")
    );

    // The overlay holds the record's after-image: the start's columns with the finish on top.
    let record: HashMap<String, String> = conn
        .hgetall(app.keys.record(Table::ExecutedObsUnit, eou))
        .await
        .expect("overlay");
    assert_eq!(
        record.get("status").map(String::as_str),
        Some("\"completed\"")
    );
    assert_eq!(record.get("obs_unit_id").map(String::as_str), Some("7"));
    assert_eq!(
        record.get("_tx"),
        Some(&buffered[5].id.to_string()),
        "latest writer"
    );
    assert!(!record.contains_key("_partial"));
    assert!(
        !record.contains_key("id"),
        "the record's key gives its id back"
    );
    let by_obs_unit: Vec<String> = conn
        .zrange(
            app.keys.index(Table::ExecutedObsUnit, "obs_unit_id", "7"),
            0,
            -1,
        )
        .await
        .expect("index");
    assert_eq!(by_obs_unit, vec![eou.to_string()]);
    let files_of_pkg: Vec<String> = conn
        .zrange(
            app.keys
                .index(Table::RawDataFile, "raw_data_package_id", &pkg.to_string()),
            0,
            -1,
        )
        .await
        .expect("index");
    assert_eq!(files_of_pkg.len(), 1);

    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_of_a_record_not_in_the_overlay_is_kept_as_a_partial_image() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    let finish = app
        .put(
            &format!("/executed_obs_units/{id}/finish"),
            &json!({"status": "aborted", "end_time": "2026-11-24T03:00:00Z"}),
        )
        .await;
    assert_eq!(finish.status, 200, "{}", finish.text);
    let mut conn = app.redis.conn().await;
    let record: HashMap<String, String> = conn
        .hgetall(app.keys.record(Table::ExecutedObsUnit, id))
        .await
        .expect("overlay");
    assert_eq!(record.get("_partial").map(String::as_str), Some("1"));
    assert_eq!(
        record.get("status").map(String::as_str),
        Some("\"aborted\"")
    );
    assert!(!record.contains_key("obs_unit_id"));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_are_all_acknowledged_and_stored_once() {
    let app = TestApp::spawn().await;
    let eou = Uuid::now_v7().to_string();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, token, body) = (
            app.client.clone(),
            app.url("/raw_data_files/"),
            app.token.clone(),
            file_body(&eou),
        );
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(r.status(), 201);
                let v: serde_json::Value = r.json().await.expect("json");
                ids.push(uuid(&v["transaction_id"]));
            }
            ids
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("task"));
    }
    let mut stored: Vec<Uuid> = app.buffered().await.iter().map(|t| t.id).collect();
    acked.sort();
    stored.sort();
    assert_eq!(acked.len(), 800);
    assert_eq!(
        stored, acked,
        "every acknowledged write stored exactly once"
    );
    let pipelines = app.tree.buffer_metrics.pipelines.get();
    assert!(
        pipelines < 800,
        "concurrent writes shared pipelines ({pipelines} for 800 writes)"
    );
    app.stop().await.expect("clean stop");
}
