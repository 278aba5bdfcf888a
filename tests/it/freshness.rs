//! The replica's freshness with no client writing: read from the replica itself and from
//! this site's heartbeat, written through the forwarder. Each way the replica can go stale
//! (replay paused, the WAL receiver cut, the forwarder cut from the primary) shows in
//! `/health` (verdict, reason, `status: degraded`), in `/metrics` and as a `replica.stale`
//! event within `replica.max_staleness`, and recovers as `replica.fresh`.

use std::time::{Duration, Instant};

use ops_db_service::config::{Config, SiteMode};
use serde_json::Value;
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{eventually, sample, TestApp};
use crate::site::Site;

/// Short intervals: a beat every second, stale after five.
fn fast(c: &mut Config) {
    c.forwarder.heartbeat_interval = Duration::from_secs(1);
    c.replica.max_staleness = Duration::from_secs(5);
}
const MAX_STALENESS: f64 = 5.0;
/// What may pass beyond `max_staleness` before the verdict shows: one freshness read
/// (every second) and the replica's own delay in stopping, with room on a busy machine.
const SLACK: Duration = Duration::from_secs(10);

/// `/health`'s `replica.freshness` once `check` accepts it (with the whole report).
async fn health_when(
    app: &TestApp,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, within, || async {
        let health = app.get("/health").await.body;
        check(&health["replica"]["freshness"]).then_some(health)
    })
    .await
}

fn is_fresh(f: &Value) -> bool {
    f["verdict"] == "fresh" && f["source"] == "replica"
}

/// The kinds of the site's events so far, in order (the capped stream in Redis).
async fn event_kinds(app: &TestApp) -> Vec<String> {
    let mut conn = app.redis.conn().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(app.keys.events())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE events");
    entries
        .iter()
        .flat_map(|(_, fields)| fields.iter().map(|(_, json)| json))
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .filter(|kind| kind.starts_with("replica."))
        .collect()
}

async fn wait_for_events(app: &TestApp, wanted: &[&str]) {
    let what = format!("the events {wanted:?}");
    eventually(&what, Duration::from_secs(10), || async {
        (event_kinds(app).await == wanted).then_some(())
    })
    .await;
}

/// A fresh, idle site: the heartbeat has reached the replica, nothing is stale.
async fn idle_site(with_wan: bool) -> Site {
    let site = Site::start(with_wan, fast).await;
    let health = health_when(&site.app, "fresh", Duration::from_secs(30), |f| {
        is_fresh(f) && f["heartbeat_age_secs"].as_f64().is_some()
    })
    .await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert!(
        event_kinds(&site.app).await.is_empty(),
        "fresh from the start"
    );
    site
}

async fn replica_superuser(site: &Site) -> PgConnection {
    PgConnection::connect(&site.pg.replica_url())
        .await
        .expect("connect to the replica")
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_replay_on_an_idle_site_is_stale_within_the_limit_and_fresh_again_after() {
    let site = idle_site(false).await;
    let app = &site.app;
    let mut replica = replica_superuser(&site).await;

    let paused = Instant::now();
    crate::pg::set_replay(&mut replica, false).await;
    let within = Duration::from_secs_f64(MAX_STALENESS) + SLACK;
    let health = health_when(app, "stale: replay stalled", within, |f| {
        f["verdict"] == "stale"
    })
    .await;
    let f = &health["replica"]["freshness"];
    assert_eq!(f["reason"], "replay_stalled", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(f["replay_paused"], true, "{f}");
    assert!(f["unreplayed_bytes"].as_u64().unwrap_or(0) > 0, "{f}");
    let age = f["replay_age_secs"].as_f64().expect("replay age");
    assert!(age > MAX_STALENESS, "not stale before the limit: {f}");
    assert!(
        paused.elapsed().as_secs_f64() > MAX_STALENESS - 2.0,
        "stale only once the limit has passed since the pause: {f}"
    );

    let metrics = app.get("/metrics").await.text;
    assert_eq!(
        sample(&metrics, "opsdb_replica_stale"),
        Some(1.0),
        "{metrics}"
    );
    let metric_age = sample(&metrics, "opsdb_replica_replay_age_seconds").expect("replay age");
    assert!(metric_age > MAX_STALENESS, "{metrics}");
    assert_eq!(
        sample(&metrics, "opsdb_replica_receiver_streaming"),
        Some(1.0),
        "the stream itself is fine: {metrics}"
    );
    assert!(sample(&metrics, "opsdb_replica_unreplayed_bytes").unwrap_or(0.0) > 0.0);
    wait_for_events(app, &["replica.stale"]).await;

    crate::pg::set_replay(&mut replica, true).await;
    let health = health_when(app, "fresh again", within, is_fresh).await;
    assert_eq!(health["status"], "healthy", "{health}");
    wait_for_events(app, &["replica.stale", "replica.fresh"]).await;
    app.get("/metrics")
        .await
        .text
        .lines()
        .find(|l| l.starts_with("opsdb_replica_stale 0"))
        .expect("opsdb_replica_stale 0");
}

/// Sets the replica's `primary_conninfo` (ALTER SYSTEM, a statement of its own: it
/// cannot run in a transaction block) and reloads: the receiver follows at once.
async fn set_conninfo(replica: &mut PgConnection, conninfo: &str) {
    let alter: String =
        sqlx::query_scalar("SELECT format('ALTER SYSTEM SET primary_conninfo = %L', $1::text)")
            .bind(conninfo)
            .fetch_one(&mut *replica)
            .await
            .expect("format");
    sqlx::raw_sql(&alter)
        .execute(&mut *replica)
        .await
        .expect("ALTER SYSTEM");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut *replica)
        .await
        .expect("reload");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_wal_receiver_on_an_idle_site_is_stale_naming_the_receiver() {
    let site = idle_site(false).await;
    let app = &site.app;
    let mut replica = replica_superuser(&site).await;
    let conninfo: String = sqlx::query_scalar("SHOW primary_conninfo")
        .fetch_one(&mut replica)
        .await
        .expect("primary_conninfo");
    assert!(!conninfo.is_empty(), "the replica streams from the primary");

    // No conninfo: the startup process stops the receiver and starts none.
    set_conninfo(&mut replica, "").await;
    let within = Duration::from_secs_f64(MAX_STALENESS) + SLACK;
    let health = health_when(app, "stale: receiver down", within, |f| {
        f["verdict"] == "stale"
    })
    .await;
    let f = &health["replica"]["freshness"];
    assert_eq!(f["reason"], "receiver_down", "{health}");
    assert!(f["receiver_status"].is_null(), "no receiver: {f}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(f["heartbeat_age_secs"].as_f64().expect("age") > MAX_STALENESS);
    let metrics = app.get("/metrics").await.text;
    assert_eq!(
        sample(&metrics, "opsdb_replica_receiver_streaming"),
        Some(0.0),
        "{metrics}"
    );
    let heartbeat = sample(&metrics, "opsdb_replica_heartbeat_age_seconds").expect("age");
    assert!(heartbeat > MAX_STALENESS, "{metrics}");
    wait_for_events(app, &["replica.stale"]).await;

    set_conninfo(&mut replica, &conninfo).await;
    let health = health_when(app, "fresh again", Duration::from_secs(30), is_fresh).await;
    assert_eq!(
        health["replica"]["freshness"]["receiver_status"],
        "streaming"
    );
    wait_for_events(app, &["replica.stale", "replica.fresh"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_advances_while_idle_and_a_forwarder_cut_from_the_primary_is_no_heartbeat() {
    let site = idle_site(true).await;
    let app = &site.app;
    let beat_at = || async {
        let mut primary = site.primary().await;
        sqlx::query_scalar::<_, f64>(
            "SELECT extract(epoch FROM beat_at)::float8 FROM opsdb_api.heartbeat WHERE site = $1",
        )
        .bind(&app.site)
        .fetch_one(&mut primary)
        .await
        .expect("this site's heartbeat row")
    };
    let first = beat_at().await;
    eventually(
        "the heartbeat advances",
        Duration::from_secs(10),
        || async { (beat_at().await > first).then_some(()) },
    )
    .await;
    let health = app.get("/health").await.body;
    assert_eq!(health["forwarder"]["applied"], 0, "nobody wrote: {health}");

    site.wan.as_ref().expect("the WAN").cut();
    let cut = beat_at().await;
    let within = Duration::from_secs_f64(MAX_STALENESS) + SLACK;
    let health = health_when(app, "stale: no heartbeat", within, |f| {
        f["verdict"] == "stale"
    })
    .await;
    let f = &health["replica"]["freshness"];
    assert_eq!(f["reason"], "no_heartbeat", "{health}");
    assert_eq!(
        f["receiver_status"], "streaming",
        "the replica is fine: {f}"
    );
    assert_eq!(f["unreplayed_bytes"], 0, "{f}");
    assert_eq!(health["status"], "degraded", "{health}");
    let stopped = beat_at().await;
    assert!(
        stopped - cut < 1.5,
        "at most the beat in flight at the cut went through: {cut} then {stopped}"
    );
    wait_for_events(app, &["replica.stale"]).await;

    site.wan.as_ref().expect("the WAN").heal();
    let health = health_when(app, "fresh again", Duration::from_secs(30), is_fresh).await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert!(beat_at().await > stopped, "beating again");
    wait_for_events(app, &["replica.stale", "replica.fresh"]).await;
}

/// On the main site the read source is the primary: trivially fresh, with no receiver or
/// replay to report, and the same query (recovery functions only called in recovery) runs
/// there without error.
#[tokio::test(flavor = "multi_thread")]
async fn the_main_site_s_primary_is_fresh_by_definition() {
    let pg = Site::primary_with_replica().await;
    let primary = pg.primary_url();
    let site = Site::start_with(pg, None, move |c| {
        c.site.mode = SiteMode::Main;
        c.forwarder.primary_url = Some(primary.clone());
        fast(c);
    })
    .await;
    let app = &site.app;
    let health = health_when(
        app,
        "fresh, from the primary",
        Duration::from_secs(30),
        |f| f["source"] == "primary" && f["heartbeat_age_secs"].as_f64().is_some(),
    )
    .await;
    let f = &health["replica"]["freshness"];
    assert_eq!(f["verdict"], "fresh", "{f}");
    assert!(f["last_error"].is_null(), "{f}");
    assert!(
        f["receiver_status"].is_null() && f["replay_age_secs"].is_null(),
        "{f}"
    );
    assert_eq!(health["status"], "healthy", "{health}");
    let metrics = app.get("/metrics").await.text;
    assert_eq!(sample(&metrics, "opsdb_replica_stale"), Some(0.0));
    assert_eq!(sample(&metrics, "opsdb_replica_receiver_streaming"), None);
}
