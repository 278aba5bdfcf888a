//! `/metrics`: what is exported is what the README documents, no more and no less.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::tcp_write;
use crate::site::Site;

/// The metric names of the README's metrics table (the first column's backticked name).
fn documented() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let rows = readme
        .lines()
        .skip_while(|line| !line.starts_with("| metric |"))
        .skip(2) // the header and its separator
        .take_while(|line| line.starts_with('|'));
    let names: BTreeSet<String> = rows
        .filter_map(|row| row.split('`').nth(1).map(str::to_owned))
        .collect();
    assert!(!names.is_empty(), "README.md has no `| metric |` table");
    names
}

/// The metric names of an OpenMetrics exposition, from its `# TYPE` lines, as the README
/// spells them: a counter family `x` is exported as `x_total`, a histogram by its base name.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| match rest.split_once(' ') {
            Some((name, "counter")) => format!("{name}_total"),
            Some((name, _)) => name.to_owned(),
            None => panic!("malformed TYPE line: {rest}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    // A whole site (forwarder and replica), so every metric is registered.
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let w = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 1}))
        .await;
    assert_eq!(w.status, 201, "{}", w.text);
    // The TCP facade is measured by the same path; a refused write is measured too.
    let refused = tcp_write(
        app.tcp,
        &json!({"op": "raw_data_package.create", "token": app.token, "request_id": 1, "body": {}}),
    )
    .await;
    assert_eq!(refused["status"], 422, "{refused}");

    let scrape = app.get("/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.text);
    assert_eq!(
        scrape
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        scrape.text.ends_with("# EOF\n"),
        "a complete exposition: {}",
        scrape.text
    );
    let exported = exported(&scrape.text);
    let documented = documented();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "exported but not in README.md's metrics table: {undocumented:?}; \
         in the table but not exported: {missing:?}\n{}",
        scrape.text
    );

    for sample in [
        r#"opsdb_ingest_duration_seconds_count{op="executed_obs_units.start",status="201"} 1"#,
        r#"opsdb_ingest_duration_seconds_count{op="raw_data_package.create",status="422"} 1"#,
        "opsdb_writes_acknowledged_total 1",
        "opsdb_writes_abandoned_total 0",
        r#"opsdb_actor_up{actor="forwarder"} 1"#,
        "opsdb_redis_up 1",
    ] {
        assert!(
            scrape.text.lines().any(|line| line == sample),
            "no line {sample:?} in\n{}",
            scrape.text
        );
    }
    site.app.stop().await.expect("clean stop");
}
