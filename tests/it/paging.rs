//! Every list answer is bounded by its limit, and walking a list by cursor sees each
//! record once, whether the replica or the overlay holds it.

use std::collections::BTreeSet;
use std::time::Duration;

use ops_db_actors::overlay::TxState;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

/// Every id of the list `path` (which ends in a query), walked by `x-next-cursor`.
async fn walk(app: &TestApp, path: &str, limit: usize) -> Vec<Value> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let r = app.get_auth(&format!("{path}&limit={limit}{after}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.body.as_array().expect("a list").clone();
        assert!(page.len() <= limit, "a page holds at most its limit");
        records.extend(page);
        cursor = r
            .headers
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if cursor.is_none() {
            return records;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn walking_a_list_by_cursor_across_replica_and_overlay_sees_each_record_once() {
    let site = Site::start(true, |_| {}).await;
    let app = &site.app;
    let wan = site.wan.as_ref().expect("wan");
    let mut created = Vec::new();
    let mut last_tx = None;
    for _ in 0..150 {
        let (id, tx) = start_obs_unit(app, 7).await;
        created.push(id);
        last_tx = Some(tx);
    }
    let last_tx = last_tx.expect("a transaction");
    eventually(
        "the first half replicated",
        Duration::from_secs(30),
        || async {
            let r = app.get_auth(&format!("/transactions/{last_tx}")).await;
            (r.body["state"] == json!(TxState::Replicated)).then_some(())
        },
    )
    .await;
    // The link is down: a partial overlay over some replica rows, and new records only in
    // the overlay.
    wan.cut();
    for id in created.iter().step_by(10) {
        let r = app
            .put(
                &format!("/executed_obs_units/{id}/finish"),
                &json!({"status": "completed"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    for _ in 0..150 {
        created.push(start_obs_unit(app, 7).await.0);
    }

    let records = walk(app, "/executed_obs_units?obs_unit_id=7", 37).await;
    let ids: Vec<Uuid> = records.iter().map(|r| uuid(&r["id"])).collect();
    let unique: BTreeSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no record twice");
    assert_eq!(
        unique,
        created.iter().copied().collect(),
        "no record missing"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order");
    let finished = records
        .iter()
        .filter(|r| r["status"] == "completed")
        .count();
    assert_eq!(finished, 15, "the overlay wins on the replica's rows");
    let first = app.get_auth("/executed_obs_units?obs_unit_id=7").await;
    assert_eq!(
        first.body.as_array().map(Vec::len),
        Some(100),
        "the default limit"
    );
    let by_old_path = app.get_auth("/executed_obs_units/7?limit=37").await;
    assert_eq!(by_old_path.body.as_array().map(Vec::len), Some(37));
    assert!(by_old_path.headers.contains_key("x-next-cursor"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nested_list_is_cut_at_the_limit_and_continues_from_its_cursor() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let (eou, _) = start_obs_unit(app, 8).await;
    let pkg = app
        .post(
            "/raw_data_package/",
            &json!({"name": "pkg", "executed_obs_unit_id": eou}),
        )
        .await;
    let pkg = uuid(&pkg.body["id"]);
    let files: Vec<Value> = (0..250)
        .map(|i| {
            let mut f = file_body(&eou.to_string());
            f["name"] = json!(format!("f{i}.fits"));
            f["raw_data_package_id"] = json!(pkg);
            f
        })
        .collect();
    let bulk = app.post("/raw_data_files/bulk", &json!(files)).await;
    assert_eq!(bulk.status, 201, "{}", bulk.text);

    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    for expected in [100, 100, 50] {
        let r = app
            .get_auth(&format!("/raw_data_package/{pkg}?limit=100{cursor}"))
            .await;
        let page = r.body["raw_data_files"].as_array().expect("files");
        assert_eq!(page.len(), expected, "{}", r.text);
        seen.extend(page.iter().map(|f| uuid(&f["id"])));
        cursor = match r.body["raw_data_files_next_cursor"].as_str() {
            Some(c) => format!("&cursor={c}"),
            None => String::new(),
        };
    }
    assert!(cursor.is_empty(), "the last page names no next one");
    assert_eq!(seen.len(), 250);
    let detail = app.get_auth(&format!("/executed_obs_units/{eou}")).await;
    let files = detail.body["raw_data_files"].as_array().map(Vec::len);
    assert_eq!(
        files,
        Some(100),
        "a detail read is bounded by the default limit"
    );
    let next = detail.body["raw_data_files_next_cursor"]
        .as_str()
        .expect("a cursor");
    let rest = app
        .get_auth(&format!(
            "/executed_obs_units/{eou}?limit=1000&files_cursor={next}"
        ))
        .await;
    assert_eq!(
        rest.body["raw_data_files"].as_array().map(Vec::len),
        Some(150)
    );
    assert_eq!(
        rest.body["raw_data_packages"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_limit_or_cursor_is_a_422_naming_the_field() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let cases = [
        ("/executed_obs_units?obs_unit_id=1&limit=0", "limit"),
        ("/executed_obs_units?obs_unit_id=1&limit=1001", "limit"),
        ("/executed_obs_units?obs_unit_id=1&limit=many", "limit"),
        ("/executed_obs_units?obs_unit_id=1&cursor=nope", "cursor"),
        ("/executed_obs_units/1?limit=-3", "limit"),
        (
            &format!("/executed_obs_units/{}?files_cursor=x", Uuid::now_v7()),
            "files_cursor",
        ),
        (
            &format!("/raw_data_package/{}?cursor=x", Uuid::now_v7()),
            "cursor",
        ),
    ];
    for (path, field) in cases {
        let r = app.get_auth(path).await;
        let error = r.assert_error(422, "invalid_query");
        assert_eq!(error["field"], field, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_list_is_paged_and_says_whether_there_is_more() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis.conn().await;
    for i in 0..25 {
        let _: String = redis::cmd("XADD")
            .arg(app.keys.dead_letters())
            .arg("*")
            .arg(&[
                ("transaction_id", Uuid::now_v7().to_string()),
                ("sqlstate", "23503".into()),
                ("reason", format!("dead {i}")),
                ("attempts", "1".into()),
                ("dead_at", "0".into()),
            ])
            .query_async(&mut redis)
            .await
            .expect("xadd");
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for (expected, more) in [(10, true), (10, true), (5, false)] {
        let r = app.admin_get(&format!("/admin/dlq?limit=10{cursor}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.body["dead_letters"].as_array().expect("a page");
        assert_eq!(
            (page.len(), r.body["more"].as_bool()),
            (expected, Some(more)),
            "{}",
            r.text
        );
        seen.extend(
            page.iter()
                .map(|l| l["reason"].as_str().unwrap_or_default().to_owned()),
        );
        cursor = r.body["next_cursor"]
            .as_str()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
    }
    let want: Vec<String> = (0..25).map(|i| format!("dead {i}")).collect();
    assert_eq!(seen, want, "oldest first, each once");
    for (path, field) in [
        ("/admin/dlq?limit=1001", "limit"),
        ("/admin/dlq?limit=0", "limit"),
        ("/admin/dlq?cursor=abc", "cursor"),
    ] {
        let r = app.admin_get(path).await;
        assert_eq!(
            r.assert_error(422, "invalid_query")["field"],
            field,
            "{path}"
        );
    }
}

/// A unit's files: `n` of them, in one bulk registration; its transaction.
async fn files_of(app: &TestApp, eou: Uuid, n: usize, tag: &str) -> Uuid {
    let bulk = app
        .post(
            "/raw_data_files/bulk",
            &crate::helpers::bulk_body(eou, n, tag),
        )
        .await;
    assert_eq!(bulk.status, 201, "{}", bulk.text);
    uuid(&bulk.body["transaction_id"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_answer_nests_a_small_page_per_unit_and_its_cursor_continues_in_the_detail_read() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let (big, _) = start_obs_unit(app, 9).await;
    let (small, _) = start_obs_unit(app, 9).await;
    let (empty, _) = start_obs_unit(app, 9).await;
    // The big unit's files: 15 from the replica, 10 more still in the overlay.
    let first = files_of(app, big, 15, "replicated").await;
    crate::helpers::until_state(app, first, TxState::Replicated, Duration::from_secs(30)).await;
    files_of(app, big, 10, "buffered").await;
    files_of(app, small, 3, "few").await;

    let r = app
        .get_auth("/executed_obs_units?obs_unit_id=9&limit=1000")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let units = r.body.as_array().expect("a list");
    assert_eq!(units.len(), 3);
    let unit = |id: Uuid| {
        units
            .iter()
            .find(|u| uuid(&u["id"]) == id)
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    let nested = ops_db_actors::overlay::NESTED_LIMIT;
    let files = |u: &Value| u["raw_data_files"].as_array().expect("files").clone();
    assert_eq!(files(unit(big)).len(), nested, "limit=1000 nests {nested}");
    assert_eq!(files(unit(small)).len(), 3);
    assert_eq!(files(unit(empty)).len(), 0);
    assert!(unit(small)["raw_data_files_next_cursor"].is_null());
    assert!(unit(empty)["raw_data_packages_next_cursor"].is_null());
    for file in files(unit(big)).iter().chain(&files(unit(small))) {
        assert!(file["sync"]["state"].is_string(), "{file}");
    }
    // The cursor continues the big unit's files in its detail read: all 25, once each.
    let mut seen: BTreeSet<Uuid> = files(unit(big)).iter().map(|f| uuid(&f["id"])).collect();
    let cursor = unit(big)["raw_data_files_next_cursor"]
        .as_str()
        .expect("a cursor");
    let rest = app
        .get_auth(&format!(
            "/executed_obs_units/{big}?limit=1000&files_cursor={cursor}"
        ))
        .await;
    let rest = rest.body["raw_data_files"].as_array().expect("files");
    assert_eq!(rest.len(), 25 - nested);
    seen.extend(rest.iter().map(|f| uuid(&f["id"])));
    assert_eq!(seen.len(), 25, "each file once across the two answers");
    let listed = files(unit(big));
    let sources: BTreeSet<&str> = rest
        .iter()
        .chain(&listed)
        .filter_map(|f| f["sync"]["state"].as_str())
        .collect();
    assert!(sources.contains("replicated"), "{sources:?}");
}
