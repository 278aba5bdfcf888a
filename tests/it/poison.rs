//! Poison: stream entries the forwarder cannot decode, and transactions the primary fails
//! the same way every time with an error that is not permanent, are dead-lettered with
//! their reason after a bounded number of attempts; the forwarder does not crash-loop on
//! them, and everything around them is applied once.

use std::collections::HashSet;
use std::time::Duration;

use ops_db_actors::overlay::TxState;
use redis::AsyncCommands;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{eventually, register_file, start_obs_unit, uuid, TestApp};
use crate::site::Site;

fn restarts(app: &TestApp) -> u64 {
    app.tree
        .health
        .get("forwarder")
        .map_or(0, |row| row.restarts)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_entries_that_are_not_transactions_are_dead_lettered_at_once() {
    let site = Site::start(false, |c| c.forwarder.linger = Duration::from_millis(200)).await;
    let app = &site.app;
    let (eou, t0) = start_obs_unit(app, 5).await;
    site.drained(Duration::from_secs(30)).await;
    let mut acked = vec![t0];
    // Between good writes, in the same batches: entries written by hand that no forwarder
    // could ever send.
    let mut redis = app.redis.conn().await;
    // A packed body cut in half: it does not unpack.
    let mut damaged = ops_db_actors::body::pack(
        br#"{"id":"01a24b6a-04cf-703d-add8-e36a13640609","site":"x","steps":[]}"#,
    );
    damaged.truncate(damaged.len() / 2);
    let poisons: [(&str, &[u8]); 5] = [
        ("other", b"{\"id\":\"not here\"}"),
        ("tx", b"not json at all"),
        ("tx", b"{\"id\": \"\xff\xfe\"}"),
        ("tx", b"{\"no_id\": 1}"),
        ("tx", &damaged),
    ];
    let mut poison_ids = Vec::new();
    for (i, (field, value)) in poisons.iter().enumerate() {
        acked.push(register_file(app, eou, &format!("before-{i}.fits")).await);
        let id: String = redis
            .xadd(app.keys.stream(), "*", &[(*field, *value)])
            .await
            .expect("xadd");
        poison_ids.push(id);
        acked.push(register_file(app, eou, &format!("after-{i}.fits")).await);
    }
    site.drained(Duration::from_secs(30)).await;

    let ledger: HashSet<Uuid> = site.ledger().await.into_iter().collect();
    assert_eq!(
        ledger,
        acked.iter().copied().collect(),
        "every good write, once"
    );
    let dead = site.dead_letters().await;
    assert_eq!(dead.len(), poisons.len(), "{dead:?}");
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(
        reasons[0].contains("no tx field (fields: other)"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("not a JSON object"), "{reasons:?}");
    assert!(reasons[2].contains("not UTF-8"), "{reasons:?}");
    assert!(reasons[3].contains("not a transaction"), "{reasons:?}");
    assert!(reasons[4].contains("packed body"), "{reasons:?}");
    // What each held, byte for byte: a retry puts back exactly that.
    let held: redis::streams::StreamRangeReply = redis
        .xrange_all(app.keys.dead_letters())
        .await
        .expect("xrange");
    for (letter, (field, value)) in held.ids.iter().zip(&poisons).skip(1) {
        let tx: Vec<u8> = letter.get("tx").expect("tx");
        assert_eq!(&tx[..], *value, "{field}");
    }
    for d in &dead {
        assert_eq!(d["transaction_id"], "", "{d}");
        assert_eq!(d["attempts"], 1, "dead-lettered on the first reading: {d}");
    }
    assert_eq!(restarts(app), 0, "the forwarder never crashed on them");
    assert_eq!(app.tree.forwarder_metrics.dead.get(), poisons.len() as u64);
    let left: usize = redis.xlen(app.keys.stream()).await.expect("xlen");
    assert_eq!(left, 0, "the poison left the stream");

    // Retrying one puts it back; it is dead-lettered again and creates no lifecycle.
    let id = dead[1]["id"].as_str().expect("id");
    let r = app.admin_post(&format!("/admin/dlq/{id}/retry")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(
        "the retried poison is dead again",
        Duration::from_secs(20),
        || async { (site.dead_letters().await.len() == poisons.len()).then_some(()) },
    )
    .await;
    let stray: bool = redis
        .exists(app.keys.lifecycle_prefix())
        .await
        .expect("exists");
    assert!(!stray, "no lifecycle hash without a transaction id");
}

/// A trigger on the primary rejects one row with `RAISE` (P0001: not a permanent error,
/// so the batch fails). The forwarder finds the transaction the batch function names,
/// and after `forwarder.max_attempts` failures it is dead-lettered with the trigger's
/// message; what came before and after it is applied once.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_the_primary_fails_every_time_is_dead_lettered_after_max_attempts() {
    let site = Site::start(false, |c| {
        c.forwarder.linger = Duration::from_millis(200);
        c.forwarder.max_attempts = 3;
    })
    .await;
    let app = &site.app;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.name = 'cursed.fits' THEN \
           RAISE EXCEPTION 'cursed file refused by a trigger'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_cursed BEFORE INSERT ON raw_data_file \
           FOR EACH ROW EXECUTE FUNCTION refuse_cursed();",
    )
    .execute(&mut site.primary().await)
    .await
    .expect("trigger");
    let (eou, t0) = start_obs_unit(app, 6).await;
    let mut acked = vec![t0];
    for i in 0..20 {
        acked.push(register_file(app, eou, &format!("f{i}.fits")).await);
    }
    let cursed = register_file(app, eou, "cursed.fits").await;
    for i in 20..40 {
        acked.push(register_file(app, eou, &format!("f{i}.fits")).await);
    }
    site.drained(Duration::from_secs(60)).await;

    let ledger: HashSet<Uuid> = site.ledger().await.into_iter().collect();
    assert_eq!(
        ledger,
        acked.iter().copied().collect(),
        "all but the cursed one, once"
    );
    let dead = site.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d: &Value = &dead[0];
    assert_eq!(uuid(&d["transaction_id"]), cursed);
    assert_eq!(d["sqlstate"], "P0001");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cursed file refused by a trigger"),
        "{reason}"
    );
    assert!(reason.contains("failed 3 times in a row"), "{reason}");
    let crashes = restarts(app);
    assert!(
        (3..=4).contains(&crashes),
        "three failed attempts, then it went through as dead: {crashes} restarts"
    );
    let mut redis = app.redis.conn().await;
    let state: Option<TxState> = redis
        .hget(app.keys.lifecycle(cursed), "state")
        .await
        .expect("hget");
    assert_eq!(state, Some(TxState::Dead));

    // The forwarder goes on: a later write is applied without any further restart.
    let later = register_file(app, eou, "later.fits").await;
    site.drained(Duration::from_secs(30)).await;
    assert!(site.ledger().await.contains(&later));
    assert_eq!(restarts(app), crashes);
}

/// Errors about the environment are never blamed on a transaction: with the primary's
/// rights taken away (42501) nothing is dead-lettered however often the batch fails, and
/// once they are back everything is applied.
#[tokio::test(flavor = "multi_thread")]
async fn an_environmental_error_is_waited_out_never_dead_lettered() {
    let site = Site::start(false, |c| c.forwarder.max_attempts = 1).await;
    let app = &site.app;
    let (eou, t0) = start_obs_unit(app, 8).await;
    site.drained(Duration::from_secs(30)).await;
    sqlx::raw_sql(
        "CREATE FUNCTION no_rights() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE insufficient_privilege USING MESSAGE = 'permission denied (test)'; END $$; \
         CREATE TRIGGER no_rights BEFORE INSERT ON raw_data_file \
           FOR EACH ROW EXECUTE FUNCTION no_rights();",
    )
    .execute(&mut site.primary().await)
    .await
    .expect("trigger");
    let t1 = register_file(app, eou, "a.fits").await;
    eventually(
        "the forwarder failed several times",
        Duration::from_secs(30),
        || async { (restarts(app) >= 3).then_some(()) },
    )
    .await;
    assert!(
        site.dead_letters().await.is_empty(),
        "nothing blamed on the transaction"
    );
    sqlx::raw_sql("DROP TRIGGER no_rights ON raw_data_file")
        .execute(&mut site.primary().await)
        .await
        .expect("drop trigger");
    site.drained(Duration::from_secs(30)).await;
    let ledger: HashSet<Uuid> = site.ledger().await.into_iter().collect();
    assert_eq!(ledger, HashSet::from([t0, t1]));
    assert!(site.dead_letters().await.is_empty());
}
