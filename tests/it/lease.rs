//! One forwarder per site: a second instance on the same Redis takes writes but does not
//! forward; it says `standby` in `/health` and takes over when the first one stops.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

async fn files(app: &TestApp, eou: Uuid, prefix: &str, n: usize) -> Vec<Uuid> {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = file_body(&eou.to_string());
        body["name"] = json!(format!("{prefix}-{i}.fits"));
        let r = app.post("/raw_data_files/", &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(uuid(&r.body["transaction_id"]));
    }
    acked
}

async fn forwarder_health(app: &TestApp) -> Value {
    let r = app.get("/health").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["forwarder"].clone()
}

async fn role_becomes(app: &TestApp, role: &str, within: Duration) -> Value {
    eventually(&format!("the forwarder is {role}"), within, || async {
        let f = forwarder_health(app).await;
        (f["role"] == role).then_some(f)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_stands_by_and_takes_over_when_the_first_stops() {
    let site = Site::start(false, |c| c.forwarder.lease_ttl = Duration::from_secs(2)).await;
    let first = &site.app;
    let active = role_becomes(first, "active", Duration::from_secs(10)).await;
    let instance = active["instance"].clone();
    assert_eq!(active["lease_holder"], instance);

    let second = site.second_instance(|_| {}).await;
    let standby = role_becomes(&second, "standby", Duration::from_secs(10)).await;
    assert_eq!(standby["lease_holder"], instance, "{standby}");
    assert_ne!(standby["instance"], instance);

    // Both take writes; only the first forwards them.
    let (eou, t0) = start_obs_unit(first, 4).await;
    site.drained(Duration::from_secs(30)).await;
    let mut acked = vec![t0];
    acked.extend(files(first, eou, "a", 30).await);
    acked.extend(files(&second, eou, "b", 30).await);
    site.drained(Duration::from_secs(30)).await;
    assert_eq!(
        second.tree.forwarder_metrics.batches.get(),
        0,
        "the standby sent nothing"
    );
    assert!(first.tree.forwarder_metrics.batches.get() > 0);
    assert_eq!(forwarder_health(&second).await["role"], "standby");

    // The first stops (cleanly: it gives the lease up); the second takes over at once.
    let Site { app: first, pg, .. } = site;
    first.stop().await.expect("first instance stops");
    role_becomes(&second, "active", Duration::from_secs(5)).await;
    acked.extend(files(&second, eou, "c", 30).await);
    eventually(
        "the second instance drains",
        Duration::from_secs(30),
        || async { (second.buffered_count().await == 0).then_some(()) },
    )
    .await;
    assert!(second.tree.forwarder_metrics.batches.get() > 0);

    let mut primary = PgConnection::connect(&pg.primary_url())
        .await
        .expect("primary");
    crate::site::assert_exactly_once(&mut primary, &acked).await;
    let dlq = second.admin_get("/admin/dlq").await;
    assert_eq!(dlq.body["dead_letters"], json!([]), "{}", dlq.text);
}
