//! Nothing grows without a release path: what Redis keeps of a transaction once it is
//! replicated, for how long, and what that costs over a week of steady writing.

use std::collections::BTreeMap;
use std::time::Duration;

use ops_db_service::config::Config;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, file_body, uuid, Reply, TestApp};
use crate::site::Site;

/// Redis memory per buffered transaction, measured by the outage benchmark (100,000
/// transactions, 1 % of them bulk registrations of 1,000 files: docs/BENCHMARKS.md). A
/// full outage must still fit beside what finished transactions keep.
const BUFFERED_BYTES: u64 = 5_700;
/// The shipped advice: `maxmemory 8gb` (packaging/redis/ops-db-api.conf).
const MAXMEMORY: u64 = 8 << 30;
/// The steady rate the budget is written for.
const WRITES_PER_SEC: u64 = 10;
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

async fn write(app: &TestApp, method: reqwest::Method, path: &str, body: &Value) -> Reply {
    let key = Uuid::now_v7().to_string();
    let r = app.send(method, path, Some(body), Some(&key)).await;
    assert!(r.status == 200 || r.status == 201, "{path}: {}", r.text);
    r
}

/// One write of every kind (each with an `Idempotency-Key`), plus one without a key; the
/// single-record writes' transaction ids and the bulk registration's.
async fn every_kind_of_write(app: &TestApp) -> (Vec<Uuid>, Uuid) {
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    let tx = |r: &Reply| uuid(&r.body["transaction_id"]);
    let start = write(
        app,
        post.clone(),
        "/executed_obs_units/start",
        &json!({"obs_unit_id": 3}),
    )
    .await;
    let eou = uuid(&start.body["id"]);
    let pkg = json!({"name": "p-1", "executed_obs_unit_id": eou});
    let pkg = write(app, post.clone(), "/raw_data_package/", &pkg).await;
    let pkg_id = uuid(&pkg.body["id"]);
    let mut file = file_body(&eou.to_string());
    file["raw_data_package_id"] = json!(pkg_id);
    let one = write(app, post.clone(), "/raw_data_files/", &file).await;
    let files: Vec<Value> = (0..10)
        .map(|i| {
            let mut f = file_body(&eou.to_string());
            f["name"] = json!(format!("bulk_{i}.fits"));
            f
        })
        .collect();
    let bulk = write(app, post.clone(), "/raw_data_files/bulk", &json!(files)).await;
    let finalize = json!({"size": 1024, "file_count": 1});
    let finalized = write(
        app,
        put.clone(),
        &format!("/raw_data_package/{pkg_id}/finalize"),
        &finalize,
    )
    .await;
    let finish = json!({"status": "completed"});
    let finished = write(
        app,
        put,
        &format!("/executed_obs_units/{eou}/finish"),
        &finish,
    )
    .await;
    let unkeyed = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 4}))
        .await;
    assert_eq!(unkeyed.status, 201, "{}", unkeyed.text);
    let singles = [&start, &pkg, &one, &finalized, &finished, &unkeyed].map(tx);
    (singles.to_vec(), tx(&bulk))
}

async fn all_replicated(app: &TestApp, txs: &[Uuid]) {
    let conn = app.redis.conn().await;
    eventually(
        "every transaction replicated",
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            async move {
                let mut pipe = redis::pipe();
                for tx in txs {
                    pipe.hget(app.keys.lifecycle(*tx), "state");
                }
                let states: Vec<Option<String>> = pipe.query_async(&mut conn).await.ok()?;
                states
                    .iter()
                    .all(|s| s.as_deref() == Some("replicated"))
                    .then_some(())
            }
        },
    )
    .await;
}

/// Every key of the site: its own prefix, scanned (a test's Redis holds one site, and the
/// scan is bounded by its size).
async fn site_keys(conn: &mut MultiplexedConnection, site: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..1000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("opsdb:{site}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("scan");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return keys;
        }
    }
    panic!("SCAN did not finish within 1000 calls")
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: &mut redis::Cmd,
) -> T {
    cmd.query_async(conn).await.expect("redis")
}

/// Seconds to live: -1 for no expiry.
async fn ttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    query(conn, redis::cmd("TTL").arg(key)).await
}

async fn memory(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    query(
        conn,
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0),
    )
    .await
}

/// What is left of the transactions, by kind of key: `(key, bytes)`.
#[derive(Default)]
struct Leftovers {
    lifecycles: BTreeMap<Uuid, u64>,
    /// `(first answer, bytes)`.
    idempotency: Vec<(String, u64)>,
    /// Bytes per event of the capped event log.
    per_event: u64,
    /// The resend window: its `MEMORY USAGE` and what it counts against `resend.max_bytes`.
    window: (u64, u64),
}

/// Checks every key of the site against what may stay once everything is replicated, and
/// returns the lifecycles and idempotency records with their sizes.
async fn leftovers(app: &TestApp, defaults: &Config) -> Leftovers {
    let mut conn = app.redis.conn().await;
    let prefix = format!("opsdb:{}:", app.site);
    let mut left = Leftovers::default();
    for key in site_keys(&mut conn, &app.site).await {
        let kind = key.strip_prefix(&prefix).expect("the site's prefix");
        match kind {
            // The site's stream and its consumer group: empty once everything is forwarded.
            "tx" => {
                let len: u64 = query(&mut conn, redis::cmd("XLEN").arg(&key)).await;
                assert_eq!(len, 0, "{key}: entries left in the stream");
            }
            // The capped event log: bounded by count (`events.stream_cap`), not by time.
            // It is the record of events, not of transactions, and stays at its cap.
            "events" => {
                let len: usize = query(&mut conn, redis::cmd("XLEN").arg(&key)).await;
                assert!(len <= defaults.events.stream_cap, "{key}: {len} events");
                left.per_event = memory(&mut conn, &key).await / len.max(1) as u64;
            }
            // One counter per site.
            "events:seq" => {}
            // The resend window: every forwarded body, compressed, bounded by its bytes
            // (`resend.max_bytes`) and its age (`resend.window`).
            "sent" => left.window.0 = memory(&mut conn, &key).await,
            // The primary's and the replica's identity: one small hash per site.
            "history" => {
                let bytes = memory(&mut conn, &key).await;
                assert!(bytes < 4 * 1024, "{key}: {bytes} bytes");
            }
            "sent:bytes" => {
                left.window.1 = query(&mut conn, redis::cmd("GET").arg(&key)).await;
                assert!(left.window.1 <= defaults.resend.max_bytes, "{key}");
            }
            // The token sources' last good sets: one key per source, a few bytes a token.
            "tokens:file" | "tokens:table" => {
                let bytes = memory(&mut conn, &key).await;
                assert!(bytes < 64 * 1024, "{key}: {bytes} bytes");
            }
            // The model registry's stored copy: one key per site, the tables' shape.
            "registry" => {
                let bytes = memory(&mut conn, &key).await;
                assert!(bytes < 64 * 1024, "{key}: {bytes} bytes");
            }
            "forwarder:lease" => {
                let ms: i64 = query(&mut conn, redis::cmd("PTTL").arg(&key)).await;
                let lease = defaults.forwarder.lease_ttl.as_millis() as i64;
                assert!(ms > 0 && ms <= lease, "{key}: PTTL {ms}");
            }
            _ if kind.starts_with("tx:") => {
                let id: Uuid = kind["tx:".len()..].parse().expect("a lifecycle's id");
                let life: BTreeMap<String, String> =
                    query(&mut conn, redis::cmd("HGETALL").arg(&key)).await;
                assert_eq!(
                    life.get("state").map(String::as_str),
                    Some("replicated"),
                    "{key}"
                );
                assert!(
                    !life.contains_key("records"),
                    "{key}: records list kept: {life:?}"
                );
                let ttl = ttl(&mut conn, &key).await;
                let retention = defaults.replica.retention.as_secs() as i64;
                assert!(
                    ttl > 0 && ttl <= retention,
                    "{key}: TTL {ttl}, retention {retention}"
                );
                left.lifecycles.insert(id, memory(&mut conn, &key).await);
            }
            _ if kind.starts_with("idem:") => {
                let ttl = ttl(&mut conn, &key).await;
                let kept = defaults.buffer.idempotency_ttl.as_secs() as i64;
                assert!(
                    ttl > 0 && ttl <= kept,
                    "{key}: TTL {ttl}, idempotency_ttl {kept}"
                );
                let bytes = memory(&mut conn, &key).await;
                // The fingerprint (32 hex), then the first answer (packed JSON).
                let record: Vec<u8> = query(&mut conn, redis::cmd("GET").arg(&key)).await;
                let answer = ops_db_actors::body::unpack(&record[32..]).expect("packed");
                let answer = String::from_utf8(answer.into_owned()).expect("JSON");
                left.idempotency.push((answer, bytes));
            }
            // Overlay records and indexes, the forwarded set, dead letters: nothing of a
            // replicated transaction may be there.
            _ => {
                let kind: String = query(&mut conn, redis::cmd("TYPE").arg(&key)).await;
                panic!("{key} ({kind}) is left after every transaction was replicated");
            }
        }
    }
    left
}

/// The shipped defaults (`config/default.toml`), which the budget is about.
fn defaults() -> Config {
    Config::from_toml_str("[site]\nname = \"defaults\"\n").expect("the defaults load")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minute_after_replication_redis_holds_only_lifecycles_and_idempotency_records_and_a_week_at_10_per_s_fits(
) {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let (singles, bulk) = every_kind_of_write(app).await;
    let txs: Vec<Uuid> = singles.iter().copied().chain([bulk]).collect();
    all_replicated(app, &txs).await;
    // Checked at once rather than a minute later: stronger, since nothing expires in
    // between. Once the last step's `tx.replicated` event is in the event log, whose size
    // per event goes into the budget.
    let events = app.keys.events();
    eventually(
        "the replication events are published",
        Duration::from_secs(10),
        || async {
            let mut conn = app.redis.conn().await;
            let recent: Vec<redis::Value> = redis::cmd("XREVRANGE")
                .arg(&events)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await
                .ok()?;
            let text = format!("{recent:?}");
            text.contains(&singles[singles.len() - 1].to_string())
                .then_some(())
        },
    )
    .await;
    let defaults = defaults();
    let left = leftovers(app, &defaults).await;

    let kept: Vec<Uuid> = left.lifecycles.keys().copied().collect();
    let mut expected = txs.clone();
    expected.sort();
    assert_eq!(kept, expected, "a lifecycle per transaction, and no other");
    assert_eq!(
        left.idempotency.len(),
        txs.len() - 1,
        "one record per keyed write"
    );

    let lifecycle = singles
        .iter()
        .map(|tx| left.lifecycles[tx])
        .max()
        .unwrap_or(0);
    let (bulks, others): (Vec<_>, Vec<_>) = left
        .idempotency
        .iter()
        .partition(|(answer, _)| answer.contains(&bulk.to_string()));
    let bulk_idem = bulks.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let single_idem = others.iter().map(|(_, b)| *b).max().unwrap_or(0);
    println!(
        "MEMORY USAGE once replicated: lifecycle up to {lifecycle} bytes (bulk's {}), \
         idempotency record up to {single_idem} bytes for a single write, {bulk_idem} for a \
         bulk registration of 10 files",
        left.lifecycles[&bulk]
    );

    // A week at 10 transactions/s, each with an Idempotency-Key: what finished ones keep,
    // beside a full outage's buffer, within the service's share of `maxmemory 8gb`.
    let kept_for = |ttl: Duration| WRITES_PER_SEC * ttl.min(WEEK).as_secs();
    let idem_bytes = kept_for(defaults.buffer.idempotency_ttl) * single_idem;
    let life_bytes = kept_for(defaults.replica.retention) * lifecycle;
    let events = defaults.events.stream_cap as u64 * left.per_event;
    let outage = defaults.buffer.max_buffered * BUFFERED_BYTES;
    let limit = (MAXMEMORY as f64 * defaults.buffer.max_memory_fraction) as u64;
    // The window at its bound: what Redis holds for it, scaled from what it counts. A
    // stream's first listpack node is allocated whole (`stream-node-max-bytes`, 4 KiB;
    // 4,728 bytes of `MEMORY USAGE` with one small entry or twenty), which the few
    // entries here do not fill: that much is the stream's, not its entries'.
    const FIRST_NODE: u64 = 4_728;
    let (window_memory, window_counted) = left.window;
    let entries_memory = window_memory.saturating_sub(FIRST_NODE);
    assert!(
        window_counted > 0 && entries_memory <= 2 * window_counted,
        "the window's count ({window_counted}) must be close to what Redis holds for its \
         entries ({window_memory}, of which {FIRST_NODE} its first node)"
    );
    let window = defaults.resend.max_bytes * entries_memory.max(window_counted) / window_counted;
    let total = idem_bytes + life_bytes + events + outage + window;
    println!(
        "a week at {WRITES_PER_SEC}/s: idempotency records {idem_bytes} + lifecycles \
         {life_bytes} + event log at its cap {events} ({} bytes per event) + a full outage \
         {outage} + the resend window at its bound {window} ({window_memory} bytes held for \
         {window_counted} counted) = {total} bytes, limit {limit}",
        left.per_event
    );
    assert!(
        total <= limit,
        "finished transactions crowd out the buffer: idempotency {idem_bytes} + lifecycles \
         {life_bytes} + events {events} + outage {outage} + window {window} > {limit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_transactions_lifecycle_stays_while_its_dead_letter_may_be_retried() {
    let site = Site::start(false, |_| {}).await;
    let app = &site.app;
    let r = app
        .post("/executed_obs_units/start", &json!({"obs_unit_id": 4242}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let tx = uuid(&r.body["transaction_id"]);
    let letters = eventually("dead-lettered", Duration::from_secs(30), || async {
        let letters = site.dead_letters().await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    let mut conn = app.redis.conn().await;
    let key = app.keys.lifecycle(tx);
    let state: String = query(&mut conn, redis::cmd("HGET").arg(&key).arg("state")).await;
    assert_eq!(state, "dead");
    assert_eq!(
        ttl(&mut conn, &key).await,
        -1,
        "no expiry while the dead letter exists"
    );

    let id = letters[0]["id"].as_str().expect("dead letter id");
    let dropped = app.admin_delete(&format!("/admin/dlq/{id}")).await;
    assert_eq!(dropped.status, 200, "{}", dropped.text);
    let ttl = ttl(&mut conn, &key).await;
    let retention = defaults().replica.retention.as_secs() as i64;
    assert!(ttl > 0 && ttl <= retention, "after the drop: TTL {ttl}");
    let life = app.get_auth(&format!("/transactions/{tx}")).await;
    assert_eq!(life.body["state"], "dead", "{}", life.text);
}
