//! Every input answered precisely: a malformed path id is a 4xx before anything reaches
//! Redis (never a 503, never another record touched), and a body declared as anything
//! but JSON is 415 on every route that takes a body.

use ops_db_service::operations::OPERATIONS;
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::helpers::TestApp;

/// The dead-letter stream's ids, oldest first.
async fn dead_letter_ids(app: &TestApp) -> Vec<String> {
    let mut redis = app.redis.conn().await;
    let reply: redis::streams::StreamRangeReply = redis
        .xrange_all(app.keys.dead_letters())
        .await
        .expect("xrange");
    reply.ids.into_iter().map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_id_is_a_complete_stream_id_or_a_422_that_touches_nothing() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis.conn().await;
    // Two dead letters of the same millisecond: what a bare `<ms>` would mix up.
    for (id, tx) in [("1000-0", "first"), ("1000-1", "second")] {
        let _: String = redis
            .xadd(
                app.keys.dead_letters(),
                id,
                &[("tx", tx), ("transaction_id", "")],
            )
            .await
            .expect("xadd");
    }
    let malformed = [
        "1000",
        "1000-",
        "-1",
        "abc",
        "1000-1-1",
        "99999999999999999999999-0",
        "%2B1-0",
        "*",
    ];
    for id in malformed {
        let retry = app.admin_post(&format!("/admin/dlq/{id}/retry")).await;
        let body = retry.assert_error(422, "invalid_id");
        assert_eq!(body["field"], "id", "{id}");
        let drop = app.admin_delete(&format!("/admin/dlq/{id}")).await;
        drop.assert_error(422, "invalid_id");
    }
    assert_eq!(
        dead_letter_ids(&app).await,
        ["1000-0", "1000-1"],
        "no malformed id retried or dropped anything"
    );
    assert_eq!(app.buffered_count().await, 0, "nothing was put back");
    app.admin_get("/admin/dlq?cursor=1000")
        .await
        .assert_error(422, "invalid_query");

    // The complete id retries exactly that entry.
    let retry = app.admin_post("/admin/dlq/1000-1/retry").await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(dead_letter_ids(&app).await, ["1000-0"]);
    assert_eq!(app.buffered_json().await, ["second"]);
    app.admin_post("/admin/dlq/1000-1/retry")
        .await
        .assert_error(404, "no_such_dead_letter");
    app.stop().await.expect("clean stop");
}

/// Every route that takes a body (each spelling of each write, and `/admin/resend`), with
/// a body that would be read if it were declared JSON.
fn routes_with_a_body(eou: &str) -> Vec<(reqwest::Method, String, Value)> {
    let mut routes = Vec::new();
    for spec in &OPERATIONS {
        let method = reqwest::Method::from_bytes(spec.method.as_str().as_bytes()).expect("method");
        for path in spec.paths {
            routes.push((
                method.clone(),
                path.replace("{id}", eou),
                json!({"obs_unit_id": 1}),
            ));
        }
    }
    routes.push((
        reqwest::Method::POST,
        "/admin/resend".into(),
        json!({"since": "1000-0", "dry_run": true}),
    ));
    routes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_declared_as_anything_but_json_is_415_on_every_route_with_a_body() {
    let app = TestApp::spawn().await;
    let eou = uuid::Uuid::now_v7().to_string();
    let routes = routes_with_a_body(&eou);
    assert!(
        routes.len() > OPERATIONS.len(),
        "every spelling, and /admin/resend"
    );
    for (method, path, body) in &routes {
        let token = if path.starts_with("/admin") {
            &app.admin_token
        } else {
            &app.token
        };
        for declared in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(token)
                .header("content-type", declared)
                .body(body.to_string())
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let answer: Value = response.json().await.expect("a JSON error");
            assert_eq!(status, 415, "{method} {path} as {declared}: {answer}");
            assert_eq!(answer["error"]["code"], "unsupported_media_type", "{path}");
        }
    }
    assert_eq!(
        app.buffered_count().await,
        0,
        "nothing declared otherwise was stored"
    );
    // Old scripts send no Content-Type at all: their body is read as JSON.
    let response = app
        .client
        .post(app.url("/executed_obs_units/start"))
        .bearer_auth(&app.token)
        .body(json!({"obs_unit_id": 1}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(app.buffered_count().await, 1);
    app.stop().await.expect("clean stop");
}

/// Every value of `key` anywhere in `value`.
fn values_of<'a>(value: &'a Value, key: &str, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    found.push(v);
                }
                values_of(v, key, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| values_of(v, key, found)),
        _ => {}
    }
}

/// What the OpenAPI document says of the fixed writes and the resend, held to on a running
/// service: an integer may be spelled with a zero fraction (JSON Schema's `integer` admits
/// `3.0`) and is stored as the integer, a fraction is a 422 naming the field; a checksum is
/// as long as its algorithm's digest; `checksum_algorithm` only with a `checksum`; NUL in
/// `meta` is refused; `since` is an RFC 3339 time (with its `T`) or a stream id of at most
/// 19 digits a part.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_document_allows_is_accepted_and_the_rest_is_a_422_naming_its_field() {
    let app = TestApp::spawn().await;
    let start = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 3.0}))
        .await;
    assert_eq!(start.status, 201, "{}", start.text);
    let stored: Value = serde_json::from_str(&app.buffered_json().await[0]).expect("JSON");
    let mut found = Vec::new();
    values_of(&stored, "obs_unit_id", &mut found);
    assert_eq!(found, [&json!(3)], "stored as the integer: {stored}");
    let eou = start.body["id"].as_str().expect("an id").to_owned();

    let file = |extra: Value| {
        let mut body = json!({
            "name": "a.fits", "relative_path": "2026/a.fits", "executed_obs_unit_id": eou,
            "size": 10.0, "checksum": "ab".repeat(32),
        });
        body.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        body
    };
    let ok = app.post("/raw_data_files", &file(json!({}))).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let md5 = json!({"checksum": "0f".repeat(16), "checksum_algorithm": "md5"});
    let ok = app.post("/raw_data_files", &file(md5)).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let finalize = format!("/raw_data_package/{eou}/finalize");
    for body in [
        json!({"file_count": 2.0, "size": 0.0}),
        json!({"checksum": "ab".repeat(20), "checksum_algorithm": "sha1"}),
        json!({"checksum": null, "checksum_algorithm": null}),
    ] {
        let ok = app.put(&finalize, &body).await;
        assert_eq!(ok.status, 200, "{body}: {}", ok.text);
    }
    let written = app.buffered_count().await;

    let refused = [
        (
            "/executed_obs_units/start",
            json!({"obs_unit_id": 3.5}),
            "invalid_field",
            "obs_unit_id",
        ),
        (
            "/executed_obs_units/start",
            json!({"obs_unit_id": 1, "meta": {"k": ["a\u{0}b"]}}),
            "invalid_value",
            "meta",
        ),
        (
            "/raw_data_files",
            file(json!({"size": 1e300})),
            "invalid_field",
            "size",
        ),
        (
            "/raw_data_files",
            file(json!({"checksum_algorithm": "sha1"})),
            "invalid_checksum",
            "checksum",
        ),
    ];
    for (path, body, code, field) in refused {
        let r = app.post(path, &body).await;
        assert_eq!(r.assert_error(422, code)["field"], field, "{body}");
    }
    for (body, code, field) in [
        (
            json!({"checksum_algorithm": "md5"}),
            "invalid_value",
            "checksum_algorithm",
        ),
        (
            json!({"checksum": "ab".repeat(20)}),
            "invalid_checksum",
            "checksum",
        ),
        (json!({"file_count": 0.5}), "invalid_field", "file_count"),
    ] {
        let r = app.put(&finalize, &body).await;
        assert_eq!(r.assert_error(422, code)["field"], field, "{body}");
    }
    assert_eq!(
        app.buffered_count().await,
        written,
        "nothing refused was stored"
    );

    // The resend: checked before it looks for a read source (this app has none: 409).
    let resend = |body: Value| {
        app.client
            .post(app.url("/admin/resend"))
            .bearer_auth(&app.admin_token)
            .json(&body)
            .send()
    };
    for since in [
        "2026-12-05T14:00:00Z",
        "2026-12-05t14:00:00.5+01:00",
        "1796479200000-3",
    ] {
        let r = resend(json!({"since": since, "limit": 5.0, "dry_run": true}))
            .await
            .expect("sent");
        let status = r.status().as_u16();
        assert_eq!(
            status,
            409,
            "{since}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    for (body, field) in [
        (json!({"since": "2026-12-05 14:00:00Z"}), "since"),
        (json!({"since": "12345678901234567890-0"}), "since"),
        (json!({"since": "yesterday"}), "since"),
        (
            json!({"since": "1-0", "after": "12345678901234567890-0"}),
            "after",
        ),
        (json!({"since": "1-0", "limit": 2.5}), "limit"),
    ] {
        let r = resend(body.clone()).await.expect("sent");
        let status = r.status().as_u16();
        let answer: Value = r.json().await.expect("a JSON error");
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    app.stop().await.expect("clean stop");
}
