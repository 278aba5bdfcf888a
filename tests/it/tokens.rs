//! Scoped tokens: `write`, `read`, `admin`; tokens from the `api_token` table that
//! replicate to the summit, keep working through outages and stop working within the
//! cache's TTL once revoked; idempotency keys that belong to one token's owner.

use std::time::{Duration, Instant};

use ops_db_actors::pg::PgTarget;
use ops_db_service::config::{Schema, Scope, Token};
use ops_db_service::token;
use serde_json::json;

use crate::helpers::{eventually, start_obs_unit, uuid, TestApp};
use crate::site::{wire, Site};

fn tokens(tokens: &[(&str, &str, &[Scope])]) -> Vec<Token> {
    tokens
        .iter()
        .map(|(name, secret, scopes)| Token {
            name: (*name).to_owned(),
            sha256: token::hash(secret),
            scopes: scopes.to_vec(),
        })
        .collect()
}

async fn status(app: &TestApp, method: reqwest::Method, path: &str, secret: &str) -> u16 {
    let mut request = app
        .client
        .request(method.clone(), app.url(path))
        .bearer_auth(secret);
    if method == reqwest::Method::POST {
        request = request.json(&json!({"obs_unit_id": 1}));
    }
    request.send().await.expect("request").status().as_u16()
}

#[tokio::test]
async fn each_scope_opens_its_routes_only_and_idempotency_keys_are_per_token() {
    let (w1, w2, r, a) = (
        token::generate(),
        token::generate(),
        token::generate(),
        token::generate(),
    );
    let tokens = tokens(&[
        ("writer-1", &w1, &[Scope::Write]),
        ("writer-2", &w2, &[Scope::Write]),
        ("reader", &r, &[Scope::Read]),
        ("admin", &a, &[Scope::Admin]),
    ]);
    let app = TestApp::spawn_with(|c| c.auth.tokens = tokens).await;
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let start = "/executed_obs_units/start";

    // Writes: write only.
    assert_eq!(status(&app, post.clone(), start, &w1).await, 201);
    for secret in [&r, &a] {
        assert_eq!(status(&app, post.clone(), start, secret).await, 403);
    }
    // Reads and the websocket: read only.
    let read = "/executed_obs_units/00000000-0000-7000-8000-000000000000";
    assert_eq!(
        status(&app, get.clone(), read, &r).await,
        404,
        "read scope: a real answer"
    );
    for secret in [&w1, &a] {
        assert_eq!(status(&app, get.clone(), read, secret).await, 403);
        assert_eq!(status(&app, get.clone(), "/ws/events", secret).await, 403);
    }
    assert_ne!(status(&app, get.clone(), "/ws/events", &r).await, 403);
    // Admin: admin only.
    for secret in [&w1, &r] {
        assert_eq!(status(&app, get.clone(), "/admin/dlq", secret).await, 403);
    }
    assert_eq!(status(&app, get.clone(), "/admin/dlq", &a).await, 200);
    // No token, a wrong token: 401.
    assert_eq!(status(&app, get.clone(), read, "opsdb_wrong").await, 401);

    // The same Idempotency-Key from two tokens: two requests, neither sees the other's answer.
    let send = |secret: &str| {
        app.client
            .post(app.url(start))
            .bearer_auth(secret)
            .header("Idempotency-Key", "job-42")
            .json(&json!({"obs_unit_id": 2}))
            .send()
    };
    let first: serde_json::Value = send(&w1).await.expect("send").json().await.expect("json");
    let again: serde_json::Value = send(&w1).await.expect("send").json().await.expect("json");
    let other: serde_json::Value = send(&w2).await.expect("send").json().await.expect("json");
    assert_eq!(
        first["transaction_id"], again["transaction_id"],
        "one token: replayed"
    );
    assert_ne!(
        first["transaction_id"], other["transaction_id"],
        "another token's same key is its own request"
    );
    uuid(&other["transaction_id"]);
    assert_eq!(
        app.buffered_count().await,
        3,
        "three writes: w1's two starts and w2's one"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn table_tokens_replicate_survive_outages_and_stop_within_the_ttl_once_revoked() {
    let pg = Site::primary_with_replica().await;
    let owner = PgTarget::plain(pg.primary_url());
    let both = [Scope::Write, Scope::Read];
    let secret = token::create(&owner, &Schema::default(), "db-client", &both, None)
        .await
        .expect("create");
    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    let expired = token::create(&owner, &Schema::default(), "expired", &both, Some(past))
        .await
        .expect("create");
    pg.wait_for_replay(&pg.current_lsn().await).await;

    let ttl = Duration::from_millis(300);
    let (primary, replica) = (pg.primary_url(), pg.replica_url());
    let site = Site::start_with(std::sync::Arc::clone(&pg), None, move |c| {
        wire(c, &primary, &replica);
        c.auth.cache_ttl = ttl;
    })
    .await;
    let app = &site.app;
    let post = reqwest::Method::POST;
    let start = "/executed_obs_units/start";

    // Read from the replica at start: writes and reads work, the expired one does not.
    assert_eq!(status(app, post.clone(), start, &secret).await, 201);
    let (eou, _) = start_obs_unit(app, 5).await;
    let read = format!("/executed_obs_units/{eou}");
    assert_eq!(status(app, reqwest::Method::GET, &read, &secret).await, 200);
    assert_eq!(status(app, post.clone(), start, &expired).await, 401);

    // A token made while the service runs works once it has replicated and the cache expired.
    let later = token::create(&owner, &Schema::default(), "later", &[Scope::Write], None)
        .await
        .expect("create");
    eventually(
        "a new table token is accepted",
        Duration::from_secs(10),
        || async { (status(app, post.clone(), start, &later).await == 201).then_some(()) },
    )
    .await;

    // The primary gone (as behind a cut WAN), then the replica too: the last good set stays.
    pg.kill_primary().await;
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(
        status(app, post.clone(), start, &secret).await,
        201,
        "primary down"
    );
    pg.stop_replica().await;
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(
        status(app, post.clone(), start, &secret).await,
        201,
        "replica down too"
    );
    pg.restart_primary().await;
    pg.start_replica().await;

    // Revoked at the primary: refused within the replication delay plus the TTL.
    assert_eq!(
        token::revoke(&owner, &Schema::default(), "db-client")
            .await
            .expect("revoke"),
        1
    );
    let revoked_at = Instant::now();
    pg.wait_for_replay(&pg.current_lsn().await).await;
    let replicated_after = revoked_at.elapsed();
    eventually(
        "the revoked token is refused",
        Duration::from_secs(10),
        || async { (status(app, post.clone(), start, &secret).await == 401).then_some(()) },
    )
    .await;
    let refused_after = revoked_at.elapsed();
    assert!(
        refused_after <= replicated_after + ttl * 2 + Duration::from_secs(1),
        "refused {refused_after:?} after the revocation, replicated after {replicated_after:?}, TTL {ttl:?}"
    );
    // The other tokens are untouched.
    assert_eq!(status(app, post.clone(), start, &later).await, 201);
    site.app.stop().await.expect("clean stop");
}
