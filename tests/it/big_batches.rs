//! Batches bounded by bytes as well as count (DESIGN §9): bulk registrations of 1,000 files
//! buffered behind a cut link drain after the heal without the forwarder ever holding more
//! than one batch's worth of them.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{bulk_body, file_body, start_obs_unit, uuid, TestApp};
use crate::site::Site;

const BULKS: usize = 60;
const BULK_FILES: usize = 1_000;
/// Single writes between the bulk ones, so that batches mix sizes.
const SINGLES_PER_BULK: usize = 5;
/// Below the size of one bulk registration (about 400 KB of JSON): each goes alone.
const BATCH_MAX_BYTES: usize = 256 * 1024;

async fn bulk(app: &TestApp, eou: Uuid, tag: usize) -> Vec<Uuid> {
    // Writes go with an idempotency key and are retried on a 503 from a slow Redis: this
    // test is about the forwarder's batches, not ingest latency under a loaded machine.
    let body = bulk_body(eou, BULK_FILES, &format!("b{tag}"));
    let r = app.post_stored("/raw_data_files/bulk", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut acked = vec![uuid(&r.body["transaction_id"])];
    for i in 0..SINGLES_PER_BULK {
        let mut f = file_body(&eou.to_string());
        f["name"] = json!(format!("s{tag}_{i}.fits"));
        let r = app.post_stored("/raw_data_files/", &f).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(uuid(&r.body["transaction_id"]));
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_registrations_behind_a_cut_link_drain_in_batches_bounded_by_bytes() {
    let site = Site::start(true, |c| c.forwarder.batch_max_bytes = BATCH_MAX_BYTES).await;
    let wan = site.wan.as_ref().expect("wan");
    let app = &site.app;
    let (eou, first) = start_obs_unit(app, 3).await;
    site.drained(Duration::from_secs(30)).await;
    wan.cut();

    let mut acked = vec![first];
    for chunk in (0..BULKS).collect::<Vec<_>>().chunks(4) {
        let writes = chunk.iter().map(|&b| bulk(app, eou, b));
        acked.extend(join_all(writes).await.concat());
    }
    let sizes: Vec<usize> = app.buffered_json().await.iter().map(String::len).collect();
    assert_eq!(sizes.len(), acked.len() - 1, "all buffered behind the cut");
    let largest_tx = *sizes.iter().max().expect("entries");
    assert!(
        largest_tx > BATCH_MAX_BYTES,
        "the test wants bulk transactions larger than the bound ({largest_tx} bytes)"
    );
    let total: usize = sizes.iter().sum();

    wan.heal();
    site.drained(Duration::from_secs(180)).await;

    let ledger: HashSet<Uuid> = site.ledger().await.into_iter().collect();
    let acked: HashSet<Uuid> = acked.into_iter().collect();
    assert_eq!(ledger, acked, "every acknowledged transaction applied");
    let files = site.files_on_primary(eou).await;
    assert_eq!(files as usize, BULKS * (BULK_FILES + SINGLES_PER_BULK));
    assert!(site.dead_letters().await.is_empty());

    // The bound the forwarder kept: no batch held more than the larger of the byte bound
    // and one transaction; a bulk registration went alone (a batch of it and anything else
    // would be larger than the largest transaction).
    let m = &app.tree.forwarder_metrics;
    let largest_batch = m.largest_batch_bytes.load(Ordering::Relaxed) as usize;
    assert_eq!(
        largest_batch, largest_tx,
        "largest batch held: {largest_batch} bytes; largest transaction: {largest_tx}"
    );
    // ... and the byte bound, not the count (2,000), cut the batches.
    let batches = m.batches.get() as usize;
    assert!(
        batches >= BULKS + total.saturating_sub(BULKS * largest_tx) / BATCH_MAX_BYTES,
        "{batches} batches for {total} bytes"
    );
    let health = app.get("/health").await;
    assert_eq!(
        health.body["forwarder"]["largest_batch_bytes"],
        json!(largest_tx),
        "{}",
        health.text
    );
}
