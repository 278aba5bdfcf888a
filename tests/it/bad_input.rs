//! Every caller mistake gets a clear JSON error, never a 500, and nothing is buffered.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{file_body, TestApp};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<String>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: Value,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        body: Some(body.to_string()),
        status,
        code,
        field,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_is_a_json_error_and_buffers_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.http.body_limit_bytes = 4096;
        c.buffer.max_bulk_files = 5;
    })
    .await;
    let eou = uuid::Uuid::now_v7().to_string();
    let file = |f: fn(&mut Value)| {
        let mut b = file_body(&eou);
        f(&mut b);
        b
    };
    let start = "/executed_obs_units/start";
    let files = "/raw_data_files/";
    let mut cases = vec![
        Case {
            name: "malformed json",
            method: Method::POST,
            path: start.into(),
            body: Some("{\"obs_unit_id\": 1,".into()),
            status: 400,
            code: "malformed_json",
            field: None,
        },
        Case {
            name: "not json at all",
            method: Method::POST,
            path: files.into(),
            body: Some("name=a.fits".into()),
            status: 400,
            code: "malformed_json",
            field: None,
        },
        Case {
            name: "empty body",
            method: Method::POST,
            path: start.into(),
            body: Some(String::new()),
            status: 400,
            code: "malformed_json",
            field: None,
        },
        case(
            "wrong type",
            Method::POST,
            start,
            json!({"obs_unit_id": "seven"}),
            422,
            "invalid_field",
            Some("obs_unit_id"),
        ),
        case(
            "missing field",
            Method::POST,
            start,
            json!({"instrument_module": "chai"}),
            422,
            "missing_field",
            Some("obs_unit_id"),
        ),
        case(
            "unknown field",
            Method::POST,
            start,
            json!({"obs_unit_id": 1, "obs_unit": 2}),
            422,
            "unknown_field",
            Some("obs_unit"),
        ),
        case(
            "non-positive obs unit",
            Method::POST,
            start,
            json!({"obs_unit_id": -3}),
            422,
            "invalid_value",
            Some("obs_unit_id"),
        ),
        case(
            "unparsable timestamp",
            Method::POST,
            start,
            json!({"obs_unit_id": 1, "start_time": "24/11/2026 03:00"}),
            422,
            "invalid_field",
            Some("start_time"),
        ),
        case(
            "timestamp without zone",
            Method::POST,
            start,
            json!({"obs_unit_id": 1, "start_time": "2026-11-24T03:00:00"}),
            422,
            "invalid_field",
            Some("start_time"),
        ),
        case(
            "invalid uuid in body",
            Method::POST,
            files,
            file(|b| b["executed_obs_unit_id"] = json!("not-a-uuid")),
            422,
            "invalid_field",
            Some("executed_obs_unit_id"),
        ),
        case(
            "negative size",
            Method::POST,
            files,
            file(|b| b["size"] = json!(-1)),
            422,
            "invalid_value",
            Some("size"),
        ),
        case(
            "malformed checksum",
            Method::POST,
            files,
            file(|b| b["checksum"] = json!("xyz")),
            422,
            "invalid_checksum",
            Some("checksum"),
        ),
        case(
            "unknown checksum algorithm",
            Method::POST,
            files,
            file(|b| b["checksum_algorithm"] = json!("crc32")),
            422,
            "invalid_field",
            Some("checksum_algorithm"),
        ),
        case(
            "empty name",
            Method::POST,
            files,
            file(|b| b["name"] = json!("")),
            422,
            "invalid_value",
            Some("name"),
        ),
        case(
            "parent segment in relative_path",
            Method::POST,
            files,
            file(|b| b["relative_path"] = json!("2026/../../etc/passwd")),
            422,
            "invalid_value",
            Some("relative_path"),
        ),
        case(
            "absolute relative_path",
            Method::POST,
            files,
            file(|b| b["relative_path"] = json!("/etc/passwd")),
            422,
            "invalid_value",
            Some("relative_path"),
        ),
        case(
            "control character in name",
            Method::POST,
            files,
            file(|b| b["name"] = json!("a\u{1b}[2J.fits")),
            422,
            "invalid_value",
            Some("name"),
        ),
        case(
            "bad finish status",
            Method::PUT,
            &format!("/executed_obs_units/{eou}/finish"),
            json!({"status": "done"}),
            422,
            "invalid_field",
            Some("status"),
        ),
        case(
            "invalid uuid in path",
            Method::PUT,
            "/executed_obs_units/42/finish",
            json!({"status": "completed"}),
            422,
            "invalid_id",
            Some("id"),
        ),
        case(
            "invalid uuid in finalize path",
            Method::PUT,
            "/raw_data_package/abc/finalize",
            json!({}),
            422,
            "invalid_id",
            Some("id"),
        ),
        case(
            "empty bulk",
            Method::POST,
            "/raw_data_files/bulk",
            json!([]),
            422,
            "invalid_value",
            Some("files"),
        ),
        case(
            "oversized bulk",
            Method::POST,
            "/raw_data_files/bulk",
            json!(vec![file_body(&eou); 6]),
            422,
            "too_many_files",
            Some("files"),
        ),
        case(
            "bad element of a bulk",
            Method::POST,
            "/raw_data_files/bulk",
            json!([file_body(&eou), file(|b| b["size"] = json!(-2))]),
            422,
            "invalid_value",
            Some("files[1].size"),
        ),
        case(
            "bulk given an object",
            Method::POST,
            "/raw_data_files/bulk",
            file_body(&eou),
            422,
            "invalid_field",
            None,
        ),
        case(
            "body over the limit",
            Method::POST,
            files,
            file(|b| b["meta"] = json!({"blob": "x".repeat(5000)})),
            413,
            "body_too_large",
            None,
        ),
        Case {
            name: "non-positive obs unit in a read path",
            method: Method::GET,
            path: "/executed_obs_units/0".into(),
            body: None,
            status: 422,
            code: "invalid_id",
            field: Some("id"),
        },
        Case {
            name: "non-positive obs unit in a list",
            method: Method::GET,
            path: "/executed_obs_units?obs_unit_id=-4".into(),
            body: None,
            status: 422,
            code: "invalid_query",
            field: Some("obs_unit_id"),
        },
        Case {
            name: "unknown path",
            method: Method::POST,
            path: "/observations/begin".into(),
            body: None,
            status: 404,
            code: "not_found",
            field: None,
        },
        Case {
            name: "wrong method",
            method: Method::GET,
            path: start.into(),
            body: None,
            status: 405,
            code: "method_not_allowed",
            field: None,
        },
        Case {
            name: "wrong method on update",
            method: Method::POST,
            path: format!("/raw_data_package/{eou}/finalize"),
            body: None,
            status: 405,
            code: "method_not_allowed",
            field: None,
        },
    ];
    cases.push(Case {
        name: "bad idempotency key",
        method: Method::POST,
        path: start.into(),
        body: Some(json!({"obs_unit_id": 1}).to_string()),
        status: 400,
        code: "invalid_idempotency_key",
        field: Some("Idempotency-Key"),
    });

    for c in &cases {
        let mut request = app
            .client
            .request(c.method.clone(), app.url(&c.path))
            .bearer_auth(&app.token);
        if let Some(body) = &c.body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        if c.code == "invalid_idempotency_key" {
            request = request.header("Idempotency-Key", "has spaces in it");
        }
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: not JSON: {text:?}", c.name));
        assert_eq!(status, c.status, "{}: {text}", c.name);
        assert_eq!(body["error"]["code"], c.code, "{}: {text}", c.name);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            c.name
        );
        if let Some(field) = c.field {
            assert_eq!(body["error"]["field"], field, "{}: {text}", c.name);
        }
    }
    assert_eq!(app.buffered_count().await, 0, "no bad input was buffered");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_need_a_valid_token_with_the_write_scope() {
    let app = TestApp::spawn().await;
    let body = json!({"obs_unit_id": 1});
    let url = app.url("/executed_obs_units/start");
    let none = app
        .client
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer"))
    );
    let wrong = app
        .client
        .post(&url)
        .bearer_auth("opsdb_not-a-token")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unauthorized");
    let basic = app
        .client
        .post(&url)
        .header("authorization", format!("Basic {}", app.token))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(basic.status(), 401);
    let admin_only = app
        .client
        .post(&url)
        .bearer_auth(&app.admin_token)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(admin_only.status(), 403, "an admin-only token cannot write");
    assert_eq!(app.buffered_count().await, 0);
    let ok = app.post("/executed_obs_units/start", &body).await;
    assert_eq!(ok.status, 201);
    app.stop().await.expect("clean stop");
}
