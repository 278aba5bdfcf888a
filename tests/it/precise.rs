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
