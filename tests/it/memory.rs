//! Redis memory as a limit: with `maxmemory` set, writes are refused (503 with
//! `Retry-After`) at `buffer.max_memory_fraction` of it, before Redis itself would refuse
//! anything (OOM), so the forwarder and the replica tracker can still drain the buffer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    assert_buffer_full, bulk_body, eventually, file_body, start_obs_unit, uuid, TestApp,
};
use crate::site::Site;

const MAXMEMORY: u64 = 64 << 20;
const WRITERS: usize = 4;
/// Files per bulk registration: a writer alternates one with a few single registrations.
const BULK_FILES: usize = 200;
const SINGLES_PER_BULK: usize = 4;

async fn info(app: &TestApp, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("INFO")
}

fn field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

async fn forwarded_left(app: &TestApp) -> u64 {
    redis::cmd("ZCARD")
        .arg(app.keys.forwarded())
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("ZCARD")
}

async fn used_memory(app: &TestApp) -> u64 {
    field(&info(app, "memory").await, "used_memory").expect("used_memory")
}

/// How many commands Redis refused for memory (`errorstat_OOM:count=N`), from anyone.
async fn oom_refusals(app: &TestApp) -> u64 {
    let stats = info(app, "errorstats").await;
    stats
        .lines()
        .find_map(|l| l.strip_prefix("errorstat_OOM:count="))
        .map_or(0, |n| n.trim().parse().expect("count"))
}

/// Sets Redis' `maxmemory` (with `noeviction`) and waits until the buffer has sampled it
/// (and, for 0, no longer refuses writes).
async fn set_maxmemory(app: &TestApp, bytes: u64) {
    let _: () = redis::pipe()
        .cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .ignore()
        .cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .ignore()
        .query_async(&mut app.redis.conn().await)
        .await
        .expect("CONFIG SET");
    eventually(
        "the buffer samples maxmemory",
        Duration::from_secs(5),
        || async {
            let m = memory_health(app).await;
            (m["max_bytes"] == json!(bytes) && (bytes > 0 || m["refusing_writes"] == false))
                .then_some(())
        },
    )
    .await;
}

async fn memory_health(app: &TestApp) -> Value {
    let h = app.get("/health").await;
    assert_eq!(h.status, 200, "{}", h.text);
    h.body["transaction_buffer"]["memory"].clone()
}

/// How one write ended.
enum Outcome {
    Acked(Uuid),
    RefusedForMemory,
}

/// Sends one write with an idempotency key of its own until it has a definite answer: a
/// 503 for another reason (a Redis round trip over `redis.timeout` on a busy machine) may
/// have stored it, and the retry then returns the first answer, so every write is counted
/// as acknowledged or not, never guessed.
async fn write_once(app: &TestApp, path: &str, body: &Value, key: &str) -> Outcome {
    for _ in 0..20 {
        let r = app
            .send(reqwest::Method::POST, path, Some(body), Some(key))
            .await;
        match r.status {
            201 => return Outcome::Acked(uuid(&r.body["transaction_id"])),
            503 if r.body["error"]["code"] == "buffer_full" => {
                assert_buffer_full(&r, "memory");
                return Outcome::RefusedForMemory;
            }
            503 => {
                assert!(r.headers.contains_key("retry-after"), "{}", r.text);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("neither acknowledged nor refused with a 503: {}", r.text),
        }
    }
    panic!("no definite answer for {key} after 20 tries")
}

/// Registers files until the service has refused them for memory for a second on end (a
/// refusal may also come from the estimate between two samples, and end with the next);
/// the acknowledged transactions and how many files they registered.
async fn write_until_refused(app: &TestApp, eou: Uuid, writer: usize) -> (Vec<Uuid>, usize) {
    let mut acked = Vec::new();
    let mut files = 0;
    let mut refused_since: Option<Instant> = None;
    for round in 0.. {
        let bulk = bulk_body(eou, BULK_FILES, &format!("w{writer}_b{round}"));
        let mut bodies = vec![("/raw_data_files/bulk", bulk, BULK_FILES)];
        for i in 0..SINGLES_PER_BULK {
            let mut f = file_body(&eou.to_string());
            f["name"] = json!(format!("w{writer}_s{round}_{i}.fits"));
            bodies.push(("/raw_data_files/", f, 1));
        }
        for (i, (path, body, n)) in bodies.into_iter().enumerate() {
            let key = format!("w{writer}-{round}-{i}");
            match write_once(app, path, &body, &key).await {
                Outcome::Acked(tx) => {
                    refused_since = None;
                    acked.push(tx);
                    files += n;
                }
                Outcome::RefusedForMemory => {
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(1) {
                        return (acked, files);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    unreachable!("the loop ends when writes are refused")
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_refused_for_memory_before_redis_refuses_anything_and_drain_after_the_heal() {
    let started = Instant::now();
    let site = Arc::new(Site::start(true, |_| {}).await);
    let wan = site.wan.as_ref().expect("wan");
    let app = &site.app;
    set_maxmemory(app, MAXMEMORY).await;
    let (eou, first) = start_obs_unit(app, 2).await;
    site.drained(Duration::from_secs(30)).await;
    wan.cut();
    let base = used_memory(app).await;
    let filling = Instant::now();

    let writers = (0..WRITERS).map(|w| {
        let site = Arc::clone(&site);
        tokio::spawn(async move { write_until_refused(&site.app, eou, w).await })
    });
    let mut acked = vec![first];
    let mut files = 0;
    for done in join_all(writers).await {
        let (txs, n) = done.expect("writer");
        acked.extend(txs);
        files += n;
    }
    let full = used_memory(app).await;
    let memory = memory_health(app).await;
    let limit = memory["limit_bytes"].as_u64().expect("a limit");
    eprintln!(
        "{} transactions ({files} files) took Redis from {base} to {full} bytes in {:?}; \
         limit {limit}",
        acked.len() - 1,
        filling.elapsed()
    );
    assert_eq!(memory["refusing_writes"], true, "{memory}");
    assert!(full < MAXMEMORY, "used_memory {full} stays under maxmemory");
    assert!(
        memory["used_bytes"].as_u64().expect("used") >= limit,
        "refused for good once Redis holds the limit: {memory}"
    );
    // Refused again, and exported.
    let r = app
        .post("/raw_data_files/", &file_body(&eou.to_string()))
        .await;
    assert_buffer_full(&r, "memory");
    let metrics = app.get("/metrics").await;
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == "opsdb_buffer_memory_full 1"),
        "{}",
        metrics.text
    );
    assert_eq!(
        oom_refusals(app).await,
        0,
        "Redis refused nothing for memory"
    );

    wan.heal();
    site.drained(Duration::from_secs(60)).await;
    let mut ledger = site.ledger().await;
    ledger.sort();
    acked.sort();
    assert_eq!(ledger, acked, "every acknowledged write applied once");
    let on_primary = site.files_on_primary(eou).await;
    assert_eq!(on_primary as usize, files);
    assert!(site.dead_letters().await.is_empty());

    // The replica tracker releases the overlay: memory comes back down to about where it
    // started (what stays is a lifecycle per transaction), and writes go in again.
    eventually("everything replicated", Duration::from_secs(60), || async {
        (forwarded_left(app).await == 0).then_some(())
    })
    .await;
    let back = base + (full - base) / 10;
    let memory = eventually(
        "memory comes back down",
        Duration::from_secs(10),
        || async {
            let m = memory_health(app).await;
            (m["used_bytes"].as_u64().expect("used") < back).then_some(m)
        },
    )
    .await;
    assert_eq!(memory["refusing_writes"], false, "{memory}");
    let peak = field(&info(app, "memory").await, "used_memory_peak").expect("peak");
    eprintln!("after the drain: {memory}; used_memory_peak {peak}");
    assert!(
        peak < MAXMEMORY,
        "used_memory_peak {peak}: Redis never reached maxmemory"
    );
    let r = app
        .post("/raw_data_files/", &file_body(&eou.to_string()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        oom_refusals(app).await,
        0,
        "the forwarder and the replica tracker were never refused either"
    );
    eprintln!("whole test {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_redis_refuses_for_memory_is_a_503_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let body = json!({"obs_unit_id": 1});
    let first = app
        .send(
            reqwest::Method::POST,
            "/executed_obs_units/start",
            Some(&body),
            Some("k-1"),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    set_maxmemory(&app, 0).await;

    // Redis over its maxmemory before the buffer's next sample: the writes reach Redis,
    // which refuses them (OOM). Should a sample come first, the buffer refuses them itself;
    // try again until Redis did.
    for attempt in 0.. {
        assert!(attempt < 5, "Redis never refused a write itself");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(1)
            .query_async(&mut app.redis.conn().await)
            .await
            .expect("CONFIG SET");
        let writes = (0..8).map(|_| app.post("/executed_obs_units/start", &body));
        for r in join_all(writes).await {
            assert_buffer_full(&r, "memory");
        }
        if oom_refusals(&app).await > 0 {
            eprintln!("Redis refused writes itself at attempt {attempt}");
            break;
        }
        set_maxmemory(&app, 0).await;
    }
    assert_eq!(app.buffered_count().await, 1, "nothing stored");
    assert_eq!(memory_health(&app).await["refusing_writes"], true);

    // A repeated idempotency key still gets its first answer, as with the count limit.
    let again = app
        .send(
            reqwest::Method::POST,
            "/executed_obs_units/start",
            Some(&body),
            Some("k-1"),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.body, first.body);

    set_maxmemory(&app, 0).await;
    let r = app.post("/executed_obs_units/start", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.stop().await.expect("clean stop");
}

/// Redis filled past its `maxmemory` by something other than the service's writes (here:
/// filler keys, then the limit lowered 8 MB under what Redis holds, more than the backlog
/// takes, so Redis stays over it throughout the drain) while a backlog waits
/// behind a cut link. Everything that drains the buffer is allowed to run at the limit:
/// after the heal the forwarder (restarted over and over meanwhile: consumer group, lease)
/// applies the backlog once, the replica tracker releases the overlay, the notifier does not
/// crash-loop, and new writes get 503 until memory is back under the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_filled_past_its_maxmemory_still_drains_after_the_heal() {
    let site = Site::start(true, |_| {}).await;
    let wan = site.wan.as_ref().expect("wan");
    let app = &site.app;
    let (eou, first) = start_obs_unit(app, 3).await;
    site.drained(Duration::from_secs(30)).await;
    wan.cut();
    let mut acked = vec![first];
    for b in 0..10 {
        let bulk = bulk_body(eou, 100, &format!("b{b}"));
        let r = app.post_stored("/raw_data_files/bulk", &bulk).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acked.push(uuid(&r.body["transaction_id"]));
        for i in 0..20 {
            let mut f = file_body(&eou.to_string());
            f["name"] = json!(format!("s{b}_{i}.fits"));
            let r = app.post_stored("/raw_data_files/", &f).await;
            assert_eq!(r.status, 201, "{}", r.text);
            acked.push(uuid(&r.body["transaction_id"]));
        }
    }

    // Fill Redis up to its maxmemory with keys that are not the service's, then lower the
    // limit under what it holds.
    set_maxmemory(app, MAXMEMORY).await;
    let mut redis = app.redis.conn().await;
    let chunk = vec![b'x'; 1 << 20];
    let mut fillers = Vec::new();
    loop {
        let key = format!("filler:{}", fillers.len());
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&key)
            .arg(&chunk)
            .query_async(&mut redis)
            .await;
        match set {
            Ok(()) => fillers.push(key),
            Err(e) if e.code() == Some("OOM") => break,
            Err(e) => panic!("filling Redis: {e}"),
        }
        assert!(fillers.len() < 128, "Redis never refused a filler");
    }
    let over = used_memory(app).await - (8 << 20);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(over)
        .query_async(&mut redis)
        .await
        .expect("CONFIG SET");
    assert!(used_memory(app).await > over, "Redis is over its maxmemory");
    let r = app
        .post("/raw_data_files/", &file_body(&eou.to_string()))
        .await;
    assert_buffer_full(&r, "memory");
    let notifier_restarts = app.tree.health.get("notifier").expect("row").restarts;
    // The forwarder keeps restarting behind the cut link, now at the limit: each restart
    // creates (finds) its consumer group, and the lease is renewed meanwhile.
    let restarts = app.tree.health.get("forwarder").expect("row").restarts;
    eventually(
        "the forwarder restarts at the limit",
        Duration::from_secs(20),
        || async {
            let row = app.tree.health.get("forwarder")?;
            (row.restarts >= restarts + 2).then_some(())
        },
    )
    .await;

    wan.heal();
    site.drained(Duration::from_secs(60)).await;
    site.assert_exactly_once(&acked).await;
    assert!(site.dead_letters().await.is_empty());
    eventually(
        "everything replicated and released",
        Duration::from_secs(60),
        || async { (forwarded_left(app).await == 0).then_some(()) },
    )
    .await;
    assert!(
        used_memory(app).await > over,
        "Redis was over its maxmemory throughout the drain"
    );
    assert_eq!(
        app.tree.health.get("notifier").expect("row").restarts,
        notifier_restarts,
        "the notifier did not crash on OOM"
    );
    let h = app.get("/health").await;
    assert_eq!(h.body["forwarder"]["role"], "active", "{}", h.text);

    // Memory back under the limit: writes go in again.
    let _: () = redis::cmd("DEL")
        .arg(&fillers)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    eventually(
        "writes are accepted again",
        Duration::from_secs(10),
        || async {
            let r = app
                .post("/raw_data_files/", &file_body(&eou.to_string()))
                .await;
            (r.status == 201).then_some(())
        },
    )
    .await;
}
