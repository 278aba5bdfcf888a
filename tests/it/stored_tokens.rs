//! Tokens survive restarts: each token source's last good set is kept in Redis and used at
//! start until the source is read; while a configured source has never been known, a token
//! no source knows gets `503 token_source_unavailable` on every facade, not `401`.

use std::sync::Arc;
use std::time::Duration;

use ops_db_actors::pg::PgTarget;
use ops_db_service::config::{Config, Schema, Scope};
use ops_db_service::token;
use redis::AsyncCommands as _;
use serde_json::{json, Value};

use crate::helpers::{eventually, tcp_write, TestApp, TestRedis};
use crate::pg::TestPg;
use crate::site::{fast_restarts, Site};

/// The application reading tokens from `pg`'s replica every 200ms, on site `site`.
fn settings<'a>(pg: &'a TestPg, site: &'a str) -> impl FnOnce(&mut Config) + 'a {
    move |c| {
        site.clone_into(&mut c.site.name);
        c.replica.url = Some(pg.replica_url());
        c.replica.poll_interval = Duration::from_millis(50);
        c.replica.connect_timeout = Duration::from_secs(1);
        fast_restarts(&mut c.replica.restart);
        c.auth.database = true;
        c.auth.cache_ttl = Duration::from_millis(200);
    }
}

/// The status of an auth-only request on the websocket route (read scope): 401, 403, 503,
/// or 400 (`not_a_websocket`) once the token has passed.
async fn ws_status(app: &TestApp, secret: &str) -> reqwest::Response {
    app.client
        .get(app.url("/ws/events"))
        .bearer_auth(secret)
        .send()
        .await
        .expect("request")
}

async fn ws(app: &TestApp, secret: &str) -> u16 {
    ws_status(app, secret).await.status().as_u16()
}

/// The reply to a TCP `auth` line (write scope).
async fn tcp_auth(app: &TestApp, secret: &str) -> Value {
    tcp_write(
        app.tcp,
        &json!({"op": "auth", "token": secret, "request_id": 1}),
    )
    .await
}

async fn table_health(app: &TestApp) -> Value {
    let health = app.get("/health").await;
    assert_eq!(health.status, 200);
    health.body["tokens"]["table"].clone()
}

async fn create(pg: &TestPg, name: &str) -> String {
    let owner = PgTarget::plain(pg.primary_url());
    let both = [Scope::Write, Scope::Read];
    token::create(&owner, &Schema::default(), name, &both, None)
        .await
        .expect("create")
}

#[tokio::test]
async fn a_restart_while_the_replica_is_down_keeps_the_table_tokens_of_the_last_run() {
    let pg = Site::primary_with_replica().await;
    let kept = create(&pg, "kept").await;
    let revoked = create(&pg, "revoked").await;
    pg.wait_for_replay(&pg.current_lsn().await).await;
    let redis = TestRedis::start().await;
    let site = format!("t{:08x}", rand::random::<u32>());

    // First run: the table is read; a revocation reaches the stored copy.
    let first = TestApp::spawn_on(Arc::clone(&redis), settings(&pg, &site)).await;
    assert_ne!(ws(&first, &kept).await, 401);
    let owner = PgTarget::plain(pg.primary_url());
    assert_eq!(
        token::revoke(&owner, &Schema::default(), "revoked")
            .await
            .expect("revoke"),
        1
    );
    pg.wait_for_replay(&pg.current_lsn().await).await;
    let key = first.keys.tokens_table();
    let mut conn = redis.conn().await;
    let stored: String = eventually(
        "the stored copy lacks the revoked token",
        Duration::from_secs(10),
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let stored: Option<String> = conn.get(&key).await.ok()?;
                stored.filter(|s| s.contains("\"kept\"") && !s.contains("\"revoked\""))
            }
        },
    )
    .await;
    let copy: Value = serde_json::from_str(&stored).expect("JSON");
    assert_eq!(
        copy[0].as_object().map(|o| {
            let mut fields: Vec<&str> = o.keys().map(String::as_str).collect();
            fields.sort_unstable();
            fields
        }),
        Some(vec!["expires_at", "name", "scopes", "sha256"]),
        "only what a check needs: {stored}"
    );
    assert_eq!(ws(&first, &revoked).await, 401);
    first.stop().await.expect("clean stop");

    // Second run, the replica down: the stored copy, not the table, answers.
    pg.stop_replica().await;
    let second = TestApp::spawn_on(Arc::clone(&redis), settings(&pg, &site)).await;
    assert_eq!(
        ws(&second, &kept).await,
        400,
        "kept: passes (not a websocket)"
    );
    assert_eq!(tcp_auth(&second, &kept).await["status"], 200);
    assert_eq!(
        ws(&second, &revoked).await,
        401,
        "revoked before the restart"
    );
    assert_eq!(
        ws(&second, "opsdb_unknown").await,
        401,
        "a stored copy settles the source"
    );
    let table = table_health(&second).await;
    assert_eq!(table["source"], "stored_copy", "{table}");
    assert!(table["read_at"].is_null(), "{table}");
    assert!(table["last_error"].is_string(), "{table}");

    // The replica back: read again.
    pg.start_replica().await;
    eventually(
        "the table is read again",
        Duration::from_secs(20),
        || async {
            let table = table_health(&second).await;
            (table["source"] == "read" && table["last_error"].is_null()).then_some(())
        },
    )
    .await;
    assert_eq!(ws(&second, &kept).await, 400);
    let _: () = conn.del(&key).await.expect("del");
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_table_never_read_answers_503_for_tokens_it_may_hold_until_it_is_read() {
    let pg = Site::primary_with_replica().await;
    let table_token = create(&pg, "from-table").await;
    pg.wait_for_replay(&pg.current_lsn().await).await;
    pg.stop_replica().await;
    let site = format!("t{:08x}", rand::random::<u32>());
    let app = TestApp::spawn_on(TestRedis::start().await, settings(&pg, &site)).await;

    // Never read, no stored copy: 503 with Retry-After on HTTP, the websocket and TCP.
    let reply = ws_status(&app, &table_token).await;
    assert_eq!(reply.status().as_u16(), 503);
    assert!(reply.headers().get("retry-after").is_some());
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "token_source_unavailable", "{body}");
    let write = app
        .client
        .post(app.url("/executed_obs_units/start"))
        .bearer_auth(&table_token)
        .json(&json!({"obs_unit_id": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(write.status().as_u16(), 503);
    assert!(write.headers().get("retry-after").is_some());
    let line = tcp_auth(&app, &table_token).await;
    assert_eq!(
        (&line["status"], &line["error"]["code"]),
        (&json!(503), &json!("token_source_unavailable")),
        "{line}"
    );
    assert!(line["retry_after"].is_u64(), "{line}");
    // A config token works all the while.
    assert_eq!(app.admin_get("/admin/dlq").await.status, 200);
    assert_eq!(tcp_auth(&app, &app.token).await["status"], 200);
    let table = table_health(&app).await;
    assert_eq!(table["source"], "none", "{table}");
    assert!(table["last_error"].is_string(), "{table}");

    // The replica up: at the next refresh the table token passes, an unknown one is 401.
    pg.start_replica().await;
    eventually(
        "the table token passes",
        Duration::from_secs(20),
        || async { (ws(&app, &table_token).await == 400).then_some(()) },
    )
    .await;
    assert_eq!(tcp_auth(&app, &table_token).await["status"], 200);
    assert_eq!(ws(&app, "opsdb_unknown").await, 401);
    assert_eq!(table_health(&app).await["source"], "read");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_tokens_file_unreadable_at_start_uses_its_stored_copy_and_without_one_stops_the_start() {
    let dir = crate::helpers::tempdir::Dir::new();
    let path = dir.0.join("tokens.toml");
    let line = |name: &str, secret: &str| {
        format!(
            "tokens = [{{ name = \"{name}\", sha256 = \"{}\", scopes = [\"write\", \"read\"] }}]\n",
            token::hash(secret)
        )
    };
    let (first_secret, second_secret) = (token::generate(), token::generate());
    std::fs::write(&path, line("first", &first_secret)).expect("write");
    let redis = TestRedis::start().await;
    let site = format!("t{:08x}", rand::random::<u32>());
    let settings = |c: &mut Config| {
        c.site.name.clone_from(&site);
        c.auth.tokens_file = Some(path.clone());
        c.auth.cache_ttl = Duration::from_millis(200);
    };
    let first = TestApp::spawn_on(Arc::clone(&redis), settings).await;
    assert_eq!(ws(&first, &first_secret).await, 400);
    first.stop().await.expect("clean stop");

    // Unreadable at the next start: the stored copy answers; /health says so.
    std::fs::write(&path, "tokens = [ broken").expect("write");
    let second = TestApp::spawn_on(Arc::clone(&redis), settings).await;
    assert_eq!(
        ws(&second, &first_secret).await,
        400,
        "from the stored copy"
    );
    assert_eq!(ws(&second, "opsdb_unknown").await, 401);
    let health = second.get("/health").await;
    let file = &health.body["tokens"]["file"];
    assert_eq!(file["source"], "stored_copy", "{file}");
    assert!(file["last_error"].is_string(), "{file}");
    assert!(
        health.body["tokens"]["table"].is_null(),
        "no read source: no table"
    );

    // Mended: read again, the stored set replaced by the file's.
    std::fs::write(&path, line("second", &second_secret)).expect("write");
    eventually(
        "the mended file is read",
        Duration::from_secs(10),
        || async { (ws(&second, &second_secret).await == 400).then_some(()) },
    )
    .await;
    assert_eq!(ws(&second, &first_secret).await, 401, "gone from the file");
    assert_eq!(
        second.get("/health").await.body["tokens"]["file"]["source"],
        "read"
    );
    second.stop().await.expect("clean stop");

    // A bad file and no stored copy (another site): the start is refused, naming the key.
    std::fs::write(&path, "tokens = [ broken").expect("write");
    let mut config = Config::defaults(&format!("t{:08x}", rand::random::<u32>()));
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.tcp.listen = ([127, 0, 0, 1], 0).into();
    config.redis.url = redis.url();
    config.redis.timeout = Duration::from_secs(1);
    config.auth.tokens_file = Some(path.clone());
    config.validate().expect("config");
    match ops_db_service::startup::Application::build(config).await {
        Ok(_) => panic!("a bad tokens file with no stored copy must stop the start"),
        Err(e) => assert!(format!("{e:#}").contains("auth.tokens_file"), "{e:#}"),
    }
    // The refused start left nothing running: no actor holds a connection to its Redis
    // (the two services before it were stopped).
    let conn = redis.conn().await;
    eventually(
        "no connection of the service is left",
        Duration::from_secs(10),
        || async {
            let mut conn = conn.clone();
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .expect("CLIENT LIST");
            (!list.contains("name=opsdb-api:")).then_some(())
        },
    )
    .await;
}
