//! The OpenAPI document at `/openapi.json`, against the running service: OpenAPI 3 JSON
//! whose every reference resolves; every route it documents answered by that route, not
//! by the router's fallback, and guarded as it says; `/docs` served with nothing but this
//! origin's assets.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::helpers::{Reply, TestApp};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `path` with each `{param}` filled with a fresh UUID.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        out.push_str(&Uuid::now_v7().to_string());
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// A request without a token.
async fn send(app: &TestApp, method: &str, path: &str) -> Reply {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let response = app.client.request(method, app.url(path)).send().await;
    Reply::from(response.expect("request sent")).await
}

#[tokio::test]
async fn every_documented_route_is_served_and_asks_for_the_token_it_documents() {
    let app = TestApp::spawn_with(|c| c.buffer.max_bulk_files = 7).await;
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let content_type = r.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let doc = r.body;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi: {version:?}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let bulk = &doc["paths"]["/raw_data_files/bulk"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(bulk["maxItems"], 7, "the configured bound: {bulk}");
    let (found, unresolved) = ops_db_service::http::openapi::references(&doc);
    assert!(!found.is_empty(), "the document refers to its schemas");
    assert!(unresolved.is_empty(), "do not resolve: {unresolved:?}");

    // The router's own answers for what it does not serve, to tell them apart.
    let fallback_404 = send(&app, "get", "/no/such/endpoint").await;
    fallback_404.assert_error(404, "not_found");
    let fallback_405 = send(&app, "delete", "/health").await;
    fallback_405.assert_error(405, "method_not_allowed");

    let mut checked = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            // Dashboard assets and the like: a GET needs no body; writes are refused for
            // the missing token before their body is read.
            let r = send(&app, method, &concrete(path)).await;
            let what = format!("{method} {path}: {} {}", r.status, r.text);
            assert_ne!(r.body, fallback_404.body, "{what}");
            assert_ne!(r.body, fallback_405.body, "{what}");
            assert!(
                r.status != 404 || r.body["error"]["field"].is_string(),
                "{what}"
            );
            assert_ne!(r.status, 405, "{what}");
            if operation["security"].is_array() {
                r.assert_error(401, "unauthorized");
            } else {
                assert_ne!(r.status, 401, "{what}: documented as open");
            }
            checked.insert((method.clone(), path.clone()));
        }
    }
    // Writes (every spelling), reads, events, admin, health, metrics, the UI.
    assert!(checked.len() >= 30, "{checked:?}");
    for expected in [
        ("post", "/executed_obs_units/start"),
        ("post", "/raw_data_files"),
        ("get", "/ws/events"),
        ("delete", "/admin/dlq/{id}"),
        ("get", "/docs"),
        ("get", "/openapi.json"),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned());
        assert!(checked.contains(&expected), "{expected:?} is documented");
    }
}

/// Every `src="…"` and `href="…"` of a page.
fn references(page: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = page;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn docs_are_served_without_a_token_from_this_origin_alone() {
    let app = TestApp::spawn().await;
    let page = app.get("/docs").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let header = |r: &Reply, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    let policy = header(&page, "content-security-policy");
    assert!(policy.starts_with("default-src 'self';"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    for (directive, sources) in policy.split(';').filter_map(|d| {
        let mut words = d.split_whitespace();
        Some((words.next()?.to_owned(), words.collect::<Vec<_>>()))
    }) {
        for source in sources {
            assert!(
                ["'self'", "'none'", "data:"].contains(&source),
                "{directive} allows {source}"
            );
        }
    }
    assert!(
        !page.text.contains("<script>") && !page.text.contains("style="),
        "nothing inline: {}",
        page.text
    );

    let assets = references(&page.text);
    assert!(assets.len() >= 3, "{assets:?}");
    for asset in &assets {
        assert!(
            asset.starts_with('/') && !asset.starts_with("//"),
            "{asset}: not from this origin"
        );
        let r = app.get(asset).await;
        assert_eq!(r.status, 200, "{asset}");
        let kind = header(&r, "content-type");
        let expected = match asset.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("json") => "application/json",
            other => panic!("{asset}: an asset of an unexpected kind {other:?}"),
        };
        assert!(kind.starts_with(expected), "{asset}: {kind}");
        assert!(r.text.len() > 100, "{asset}");
    }
    // The initialiser points Swagger UI at this service's document, and at no validator.
    let script = app.get("/docs/docs.js").await.text;
    assert!(script.contains(r#"url: "/openapi.json""#), "{script}");
    assert!(script.contains("validatorUrl: null"), "{script}");
    assert!(!script.contains("http"), "{script}");
}

/// schemathesis, installed by `scripts/install-schemathesis.sh` (or `OPSDB_SCHEMATHESIS`).
/// `st run` against the app's document with the project's hooks and config, `token` (the
/// app's write or admin token), and its caches in `work` (a temporary directory, not the
/// repository); the caller adds what to run and the checks.
fn schemathesis_run(
    st: &std::path::Path,
    app: &crate::helpers::TestApp,
    token: &str,
    work: &crate::helpers::tempdir::Dir,
) -> tokio::process::Command {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let mut command = tokio::process::Command::new(st);
    command
        .current_dir(&work.0)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &dir)
        .env("OPSDB_TOKEN", token)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args([
            "--phases",
            "coverage,fuzzing",
            "--continue-on-failure",
            "--generation-database",
            "none",
        ]);
    command
}

/// The report of a run that must have found nothing (its exit status says so).
fn clean_report(output: &std::process::Output) -> String {
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var_os("OPSDB_SCHEMATHESIS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/st"),
        std::path::PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-schemathesis.sh (python3 and python3-venv from \
         scripts/install-deps.sh), or point OPSDB_SCHEMATHESIS at an `st` binary",
        path.display()
    );
    path
}

/// An OpenAPI-driven generator, every check on, against `POST /transactions` as the live
/// model registry documents it: no request the document allows is refused, none it forbids
/// is accepted, every answer fits the document. The hooks (`tests/schemathesis/hooks.py`)
/// keep generated idempotency keys and step ids from repeating, the two rules the document
/// states but JSON Schema cannot.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_wrong_with_transactions() {
    let st = schemathesis();
    let site = crate::site::Site::start(false, |_| {}).await;
    let app = &site.app;
    let health = app.get("/health").await;
    assert_eq!(
        health.body["registry"]["source"], "read_source",
        "{}",
        health.text
    );
    let work = crate::helpers::tempdir::Dir::new();
    let output = schemathesis_run(&st, app, &app.token, &work)
        .args([
            "--checks",
            "all",
            "--include-operation-id",
            "transactions",
            "--max-examples",
            "300",
        ])
        .output()
        .await
        .expect("schemathesis runs");
    let report = clean_report(&output);
    assert!(report.contains("No issues found"), "{report}");
}

/// What a whole site serves at `/health` and `/health/actors` (every section there: a
/// forwarder, a replica, a write replicated) reads into the service's own types and
/// writes back as the same JSON: no field the types do not know, none they drop. And
/// schemathesis, asking those two operations, finds every answer valid against the
/// schemas the document gives them (`HealthReport`, `ActorsReport`).
#[tokio::test(flavor = "multi_thread")]
async fn the_health_reports_a_site_serves_read_back_unchanged_and_fit_their_schemas() {
    use ops_db_service::health_report::{ActorsReport, HealthReport};
    let st = schemathesis();
    let site = crate::site::Site::start(false, |_| {}).await;
    let app = &site.app;
    crate::helpers::start_obs_unit(app, 1).await;
    site.drained(std::time::Duration::from_secs(20)).await;
    let health = app.get("/health").await;
    assert_eq!(health.status, 200, "{}", health.text);
    let report: HealthReport = serde_json::from_value(health.body.clone()).expect("a report");
    assert_eq!(
        serde_json::to_value(&report).expect("serialises"),
        health.body,
        "read and written back unchanged"
    );
    for section in [
        "forwarder",
        "replica",
        "events",
        "registry",
        "tokens",
        "tree",
    ] {
        assert!(
            !health.body[section].is_null(),
            "{section}: {}",
            health.text
        );
    }
    let actors = app.get("/health/actors").await;
    let tree: ActorsReport = serde_json::from_value(actors.body.clone()).expect("a report");
    assert_eq!(
        serde_json::to_value(&tree).expect("serialises"),
        actors.body
    );
    assert!(tree.replica.is_some(), "{}", actors.text);

    let work = crate::helpers::tempdir::Dir::new();
    let output = tokio::process::Command::new(&st)
        .current_dir(&work.0)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_COLOR", "1")
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args([
            "--include-operation-id",
            "health",
            "--include-operation-id",
            "actors",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            "--max-examples",
            "5",
            "--generation-database",
            "none",
        ])
        .output()
        .await
        .expect("schemathesis runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{out}");
    assert!(out.contains("No issues found"), "{out}");
    assert!(
        out.contains("2 selected"),
        "both operations are checked: {out}"
    );
}

/// Every `GET` operation (reads, lifecycles, health, metrics, the document itself, the
/// dead-letter list), every check on, against a whole site (a replica behind the reads):
/// no request the document allows is refused, none it forbids is accepted, every answer
/// fits it. Left out, and why: `GET /ws/events` (a websocket: the generator speaks plain
/// HTTP only). The test token has the `write` and `read` scopes, so the admin listing is
/// checked for its 403 and its schema only (the admin run below lists with the admin
/// token).
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_wrong_with_any_read_or_health_operation() {
    let st = schemathesis();
    let site = crate::site::Site::start(false, |_| {}).await;
    let app = &site.app;
    crate::helpers::start_obs_unit(app, 1).await;
    let work = crate::helpers::tempdir::Dir::new();
    let output = schemathesis_run(&st, app, &app.token, &work)
        .args([
            "--checks",
            "all",
            "--include-method",
            "GET",
            "--exclude-path",
            "/ws/events",
            "--max-examples",
            "100",
        ])
        .output()
        .await
        .expect("schemathesis runs");
    let report = clean_report(&output);
    assert!(report.contains("passed"), "{report}");
}

/// Every other operation, every check on, against a whole site (a read source for the
/// resend's ledger): the fixed writes at every spelling (`POST /transactions` has its run
/// above) with the write token, and every admin operation (the dead letters' list, retry
/// and drop, the resend, the history's clearing, the kill drill, refused here as
/// `faults.enabled` is off) with the admin token, so each is checked past its 403. No
/// request the document allows is refused, none it forbids is accepted, every answer fits
/// the document. The site is the test's own, so what the admin actions change (its dead
/// letters, its stream, its history) is nobody else's.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_wrong_with_any_write_or_admin_operation() {
    let st = schemathesis();
    let site = crate::site::Site::start(false, |_| {}).await;
    let app = &site.app;
    crate::helpers::start_obs_unit(app, 1).await;
    let work = crate::helpers::tempdir::Dir::new();
    // A file's schema is exact, so drawing one takes the generator some filtering (the
    // lookaheads of `relative_path`'s pattern, the years of `created_at` beside its
    // `date-time`, a checksum per algorithm), the more so for a bulk registration's array
    // of them: its health check on that efficiency can trip now and then. That check says
    // nothing of the service, so it is off here; every check of the answers stays on.
    let writes = schemathesis_run(&st, app, &app.token, &work)
        .args([
            "--checks",
            "all",
            "--include-tag",
            "writes",
            "--exclude-operation-id",
            "transactions",
            "--max-examples",
            "25",
            "--suppress-health-check",
            "filter_too_much",
        ])
        .output();
    let admin = schemathesis_run(&st, app, &app.admin_token, &work)
        .args([
            "--checks",
            "all",
            "--include-tag",
            "admin",
            "--max-examples",
            "25",
        ])
        .output();
    let (writes, admin) = tokio::join!(writes, admin);
    for (what, output, operations) in [("writes", writes, 8), ("admin", admin, 6)] {
        let report = clean_report(&output.expect("schemathesis runs"));
        println!("{what}:\n{report}");
        assert!(
            report.contains(&format!("{operations} selected")),
            "{what}: every operation is checked: {report}"
        );
    }
}
