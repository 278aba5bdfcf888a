//! `ops-db-api bench bytes`: what each write costs in Redis, in AOF bytes (fsynced) and in
//! `used_memory`, measured on a Redis of its own with the summit host's settings
//! (`appendonly yes`, `appendfsync always`) and the real service in this process.
//!
//! 1. Buffered (no primary: nothing forwards): start-observations with and without an
//!    `Idempotency-Key`, then bulk registrations; per write, the deltas of
//!    `aof_current_size`, `used_memory` and the key count, notifier events included.
//! 2. A breakdown: `MEMORY USAGE` of each kind of key one write leaves, and the AOF bytes
//!    of one write by command (its AOF tail, parsed: it is RESP).
//! 3. Replicated (a local primary and its replica): what a transaction leaves in Redis once
//!    it is `replicated`; the AOF one bulk registration appends from its POST until it is
//!    replicated (forwarding, settling and the release of its records), by command.
//! 4. With `--soak`: constant-rate writes, replicated as they go, Redis' size each minute.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use ops_db_actors::overlay::Keys;
use ops_db_service::config::Config;
use ops_db_service::startup::Application;
use ops_db_service::token;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{load_average, redis_info};
use crate::local_redis::LocalRedis;
use crate::ports::free_port;

const SITE: &str = "bench";

/// `ops-db-api bench bytes`' options.
#[derive(clap::Args)]
pub struct Options {
    /// Start-observations per buffered measurement (one without, one with a key).
    #[arg(long, default_value_t = 10_000)]
    pub writes: usize,
    /// Concurrent writers (the notifier writes one event per pipeline of writes).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Bulk registrations of `--bulk-files` files.
    #[arg(long, default_value_t = 10)]
    pub bulks: usize,
    #[arg(long, default_value_t = 1000)]
    pub bulk_files: usize,
    /// Start-observations written, then waited for until replicated, in the replicated
    /// measurement (0: none).
    #[arg(long, default_value_t = 2000)]
    pub replicated: usize,
    /// `replica.retention` of the replicated measurement and the soak (the default: the
    /// shipped one); when set, the replicated measurement is taken again after it.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// Constant-rate writes for this long after the replicated measurement.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub soak: Option<Duration>,
    /// Writes per second of the soak.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value = "target/bench")]
    pub dir: PathBuf,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.writes > 0 && o.clients > 0,
        "--writes and --clients must be > 0"
    );
    anyhow::ensure!(
        (1..=1000).contains(&o.bulk_files),
        "--bulk-files must be 1 to 1000 (buffer.max_bulk_files)"
    );
    anyhow::ensure!(o.rate > 0.0, "--rate must be positive");
    let dir = o.dir.join(format!("bytes-{}", std::process::id()));
    println!(
        "ops-db-api bench bytes: commit {}, {} start-observations x2, {} bulks of {} files, {} \
         clients; {} replicated{}; load average {}",
        commit(),
        o.writes,
        o.bulks,
        o.bulk_files,
        o.clients,
        o.replicated,
        o.soak
            .map(|s| format!(", soak {} at {}/s", humantime::format_duration(s), o.rate))
            .unwrap_or_default(),
        load_average()
    );
    let result = async {
        buffered(&o, &dir.join("buffered")).await?;
        replicated(&o, &dir.join("replicated")).await
    }
    .await;
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("servers' data and logs left in {}", dir.display()),
    }
    result
}

/// The body the ingest and outage benchmarks post to start an executed obs unit.
fn start_body() -> Value {
    json!({"obs_unit_id": 3, "instrument_module": "prime-cam"})
}

/// What Redis holds and has appended: `used_memory`, `aof_current_size`, key count.
#[derive(Clone, Copy)]
struct Size {
    memory: u64,
    aof: u64,
    keys: u64,
}

async fn size(conn: &mut MultiplexedConnection) -> anyhow::Result<Size> {
    let info = redis_info(conn, &["memory", "persistence"]).await?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(conn).await?;
    Ok(Size {
        memory: info.get("used_memory").copied().unwrap_or(0),
        aof: info.get("aof_current_size").copied().unwrap_or(0),
        keys,
    })
}

/// Waits until the notifier has written what it had queued (the event count is still for
/// half a second), then measures.
async fn settled_size(conn: &mut MultiplexedConnection, keys: &Keys) -> anyhow::Result<Size> {
    let mut last: Option<u64> = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seq: Option<u64> = redis::cmd("GET")
            .arg(keys.events_seq())
            .query_async(conn)
            .await?;
        if last == Some(seq.unwrap_or(0)) {
            break;
        }
        last = Some(seq.unwrap_or(0));
    }
    size(conn).await
}

async fn admin(redis: &LocalRedis) -> anyhow::Result<MultiplexedConnection> {
    Ok(redis::Client::open(redis.admin_url())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(30))),
        )
        .await?)
}

/// A started service: its base URL, its stop token and its task.
struct Running {
    base: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_service(
    redis_url: &str,
    secret: &str,
    settings: impl FnOnce(&mut Config),
) -> anyhow::Result<Running> {
    let app = Application::build(super::service_config(SITE, redis_url, secret, settings)?).await?;
    let base = format!("http://{}", app.http_addr());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    Ok(Running { base, stop, server })
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await.context("server task")?
    }
}

/// One write: its answer, which must have `want` status.
async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    key: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    let mut request = http.post(url).bearer_auth(secret).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.as_u16() == 201, "{url}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Where the writes go.
#[derive(Clone, Copy)]
struct Api<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    secret: &'a str,
}

/// `n` writes of `body` to `path` from `clients` writers (keyed `{key}-{i}` if `key`); the
/// answers.
async fn write_many(
    api: Api<'_>,
    path: &str,
    n: usize,
    clients: usize,
    key: Option<&str>,
    body: impl Fn(usize) -> Value,
) -> anyhow::Result<Vec<Value>> {
    let Api { http, base, secret } = api;
    let url = format!("{base}{path}");
    futures::stream::iter(0..n)
        .map(|i| {
            let (url, body) = (&url, body(i));
            let key = key.map(|k| format!("{k}-{i}"));
            async move { post(http, url, secret, key.as_deref(), &body).await }
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One row of the per-write table: deltas over `n` writes of `unit`.
fn row(what: &str, n: usize, unit: &str, before: Size, after: Size) {
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    println!(
        "| {what} | {n} {unit} | {:.0} | {:.0} | {:.3} |",
        per(after.aof, before.aof),
        per(after.memory, before.memory),
        per(after.keys, before.keys)
    );
}

/// Phase 1 and 2: buffered writes on a Redis of our own, no primary.
async fn buffered(o: &Options, dir: &Path) -> anyhow::Result<()> {
    let redis = LocalRedis::start(dir, free_port()?).await?;
    let mut conn = admin(&redis).await?;
    // No AOF rewrite in the middle of a measurement (it would reset `aof_current_size`).
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("auto-aof-rewrite-percentage")
        .arg(0)
        .query_async::<()>(&mut conn)
        .await?;
    let secret = token::generate();
    let service = start_service(&redis.url(), &secret, |_| {}).await?;
    let base = service.base.clone();
    let keys = Keys::new(SITE);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.clients)
        .build()?;
    let api = Api {
        http: &http,
        base: &base,
        secret: &secret,
    };
    // Warm-up: the service's own keys (registry, tokens) and the stream exist.
    write_many(
        api,
        "/executed_obs_units/start",
        100,
        o.clients,
        None,
        |_| start_body(),
    )
    .await?;

    println!();
    println!(
        "Buffered (no primary), per write: deltas of `aof_current_size`, `used_memory`, key count"
    );
    println!("| write | count | AOF bytes | used_memory bytes | keys |");
    println!("|---|---:|---:|---:|---:|");
    let start = "/executed_obs_units/start";
    let s0 = settled_size(&mut conn, &keys).await?;
    write_many(api, start, o.writes, o.clients, None, |_| start_body()).await?;
    let s1 = settled_size(&mut conn, &keys).await?;
    row("start-observation, no key", o.writes, "writes", s0, s1);
    let started = write_many(api, start, o.writes, o.clients, Some("k"), |_| start_body()).await?;
    let s2 = settled_size(&mut conn, &keys).await?;
    row(
        "start-observation, Idempotency-Key",
        o.writes,
        "writes",
        s1,
        s2,
    );
    let eou = started
        .last()
        .and_then(|a| a["id"].as_str())
        .context("start answered no id")?
        .to_owned();
    let files = o.bulks * o.bulk_files;
    if o.bulks > 0 {
        let bulk = |i: usize| {
            Value::Array(
                (0..o.bulk_files)
                    .map(|k| super::file_body(&eou, &format!("b{i}_{k}.fits")))
                    .collect(),
            )
        };
        write_many(api, "/raw_data_files/bulk", o.bulks, 1, Some("b"), bulk).await?;
        let s3 = settled_size(&mut conn, &keys).await?;
        row(
            "bulk registration, Idempotency-Key, per file",
            files,
            "files",
            s2,
            s3,
        );
    }

    breakdown(&http, &base, &secret, &mut conn, &keys, &eou).await?;
    service.stop().await?;
    redis.stop().await;
    Ok(())
}

/// `MEMORY USAGE` of one key, `SAMPLES 0` (every element).
async fn memory(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<u64> {
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await?;
    Ok(bytes.unwrap_or(0))
}

async fn count(conn: &mut MultiplexedConnection, cmd: &str, key: &str) -> anyhow::Result<u64> {
    Ok(redis::cmd(cmd).arg(key).query_async(conn).await?)
}

/// A stream entry's fields, in order, with their values as stored.
type Fields = Vec<(String, Vec<u8>)>;

/// The breakdown: what each kind of key costs, and one write's AOF bytes by command.
async fn breakdown(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    eou: &str,
) -> anyhow::Result<()> {
    println!();
    println!("Breakdown (`MEMORY USAGE ... SAMPLES 0`, bytes; a key's share where it holds many writes):");
    println!("| key | bytes |");
    println!("|---|---:|");
    let stream = keys.stream();
    let per = |total: u64, n: u64| total as f64 / n.max(1) as f64;
    let (bytes, n) = (
        memory(conn, &stream).await?,
        count(conn, "XLEN", &stream).await?,
    );
    println!(
        "| stream `tx`, per entry ({n} entries) | {:.0} |",
        per(bytes, n)
    );
    let record = keys.record_of("executed_obs_unit", eou);
    println!(
        "| overlay record of a start-observation | {} |",
        memory(conn, &record).await?
    );
    let index = keys.index_of("executed_obs_unit", "obs_unit_id", "3");
    let (bytes, n) = (
        memory(conn, &index).await?,
        count(conn, "ZCARD", &index).await?,
    );
    println!(
        "| index `obs_unit_id:3`, per entry ({n} entries) | {:.0} |",
        per(bytes, n)
    );
    let events = keys.events();
    let (bytes, n) = (
        memory(conn, &events).await?,
        count(conn, "XLEN", &events).await?,
    );
    let seq: u64 = redis::cmd("GET")
        .arg(keys.events_seq())
        .query_async(conn)
        .await?;
    println!(
        "| event stream, per event ({n} events, {seq} written; `events.stream_cap` bounds it) | {:.0} |",
        per(bytes, n)
    );
    // One write at a time, each with its AOF tail.
    let aof = aof_file(conn).await?;
    let mut tails = Vec::new();
    let mut entry_text = String::new();
    let mut entry_stored = 0;
    for (what, key) in [
        ("start-observation, no key", None),
        ("start-observation, Idempotency-Key", Some("one")),
    ] {
        let from = std::fs::metadata(&aof)?.len();
        let answer = post(
            http,
            &format!("{base}/executed_obs_units/start"),
            secret,
            key,
            &start_body(),
        )
        .await?;
        settled_size(conn, keys).await?;
        tails.push((what.to_owned(), read_from(&aof, from)?));
        let tx = answer["transaction_id"]
            .as_str()
            .context("no transaction_id")?;
        let life = keys.lifecycle(tx.parse()?);
        if let Some(key) = key {
            let idem = idempotency_key(conn, keys, key).await?;
            println!(
                "| idempotency record ({}) | {} |",
                shape(conn, &idem).await?,
                memory(conn, &idem).await?
            );
            continue;
        }
        println!(
            "| lifecycle `tx:{{id}}` of a buffered start-observation ({}) | {} |",
            shape(conn, &life).await?,
            memory(conn, &life).await?
        );
        let id = answer["id"].as_str().context("no id")?;
        let record = keys.record_of("executed_obs_unit", id);
        println!(
            "| overlay record of a start-observation ({}) | {} |",
            shape(conn, &record).await?,
            memory(conn, &record).await?
        );
        let entry: Vec<(String, Fields)> = redis::cmd("XREVRANGE")
            .arg(keys.stream())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        if let Some((_, fields)) = entry.first() {
            if let Some((_, stored)) = fields.first() {
                entry_stored = stored.len();
                let json = ops_db_actors::body::unpack(stored)?;
                entry_text = String::from_utf8_lossy(&json).into_owned();
            }
        }
    }
    let bulk_from = std::fs::metadata(&aof)?.len();
    let files: Vec<Value> = (0..1000)
        .map(|k| super::file_body(eou, &format!("tail_{k}.fits")))
        .collect();
    let answer = post(
        http,
        &format!("{base}/raw_data_files/bulk"),
        secret,
        Some("tailbulk"),
        &json!(files),
    )
    .await?;
    settled_size(conn, keys).await?;
    let tx = answer["transaction_id"]
        .as_str()
        .context("no transaction_id")?;
    let life = keys.lifecycle(tx.parse()?);
    let mut life_shape = shape(conn, &life).await?;
    life_shape.truncate(300);
    println!(
        "| lifecycle of a buffered bulk of 1,000 files ({life_shape}) | {} |",
        memory(conn, &life).await?
    );
    if let Some(first) = answer["ids"].as_array().and_then(|ids| ids.first()) {
        let rec = keys.record_of("raw_data_file", first.as_str().unwrap_or_default());
        println!(
            "| overlay record of a registered file ({}) | {} |",
            shape(conn, &rec).await?,
            memory(conn, &rec).await?
        );
    }
    let idem = idempotency_key(conn, keys, "tailbulk").await?;
    println!(
        "| idempotency record of a bulk of 1,000 files ({}) | {} |",
        shape(conn, &idem).await?,
        memory(conn, &idem).await?
    );
    println!();
    println!(
        "A start-observation's stream entry ({entry_stored} bytes stored, {} of JSON): \
         {entry_text}",
        entry_text.len()
    );
    tails.push((
        "bulk of 1,000 files, Idempotency-Key".to_owned(),
        read_from(&aof, bulk_from)?,
    ));

    for (what, tail) in tails {
        println!();
        println!("AOF appended by one write ({what}): {} bytes", tail.len());
        println!("| command | count | bytes | of which arguments' text |");
        println!("|---|---:|---:|---:|");
        for (cmd, (n, bytes, text)) in by_command(&tail)? {
            println!("| {cmd} | {n} | {bytes} | {text} |");
        }
    }
    Ok(())
}

/// A key's encoding, and for a hash its fields with the length of each value.
async fn shape(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<String> {
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async(conn)
        .await?;
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await?;
    if kind != "hash" {
        return Ok(format!("{kind}, {encoding}"));
    }
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    let fields: Vec<String> = fields
        .iter()
        .map(|(f, v)| format!("`{f}` {}", v.len()))
        .collect();
    Ok(format!("{encoding}: {}", fields.join(", ")))
}

/// The key of idempotency key `key` of the bench token, found by its suffix.
async fn idempotency_key(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    key: &str,
) -> anyhow::Result<String> {
    let pattern = keys.idempotency(&format!("*/{key}"));
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await?;
        if let Some(k) = found.into_iter().next() {
            return Ok(k);
        }
        anyhow::ensure!(next != 0, "no idempotency record for {key}");
        cursor = next;
    }
}

/// The AOF file Redis appends to now: the newest `*.incr.aof` of its AOF directory.
async fn aof_file(conn: &mut MultiplexedConnection) -> anyhow::Result<PathBuf> {
    let get = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await?;
            pair.get(1).cloned().with_context(|| format!("no {name}"))
        }
    };
    let dir = PathBuf::from(get("dir").await?).join(get("appenddirname").await?);
    std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incr.aof"))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .with_context(|| format!("no .incr.aof in {}", dir.display()))
}

fn read_from(path: &Path, from: u64) -> anyhow::Result<Vec<u8>> {
    let all = std::fs::read(path)?;
    Ok(all.get(from as usize..).unwrap_or_default().to_vec())
}

/// A key without its site prefix and with its ids elided: `tx`, `tx:…`, `rec:raw_data_file:…`.
fn key_kind(key: &str) -> String {
    let rest = key.strip_prefix(&format!("opsdb:{SITE}:")).unwrap_or(key);
    let mut parts = rest.split(':');
    let first = parts.next().unwrap_or_default();
    match (first, parts.next()) {
        ("rec" | "idx", Some(table)) => format!("{first}:{table}:…"),
        (_, Some(_)) => format!("{first}:…"),
        (_, None) => first.to_owned(),
    }
}

/// RESP arrays of bulk strings (what an AOF is), by command name: (count, bytes, bytes of
/// the arguments' text alone).
fn by_command(mut aof: &[u8]) -> anyhow::Result<BTreeMap<String, (u64, u64, u64)>> {
    fn line<'a>(buf: &mut &'a [u8]) -> anyhow::Result<&'a [u8]> {
        let end = buf
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a RESP line without CRLF")?;
        let l = &buf[..end];
        *buf = &buf[end + 2..];
        Ok(l)
    }
    fn number(l: &[u8], tag: u8) -> anyhow::Result<usize> {
        anyhow::ensure!(l.first() == Some(&tag), "expected {}", tag as char);
        Ok(std::str::from_utf8(&l[1..])?.parse()?)
    }
    let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    while !aof.is_empty() {
        let start = aof.len();
        let n = number(line(&mut aof)?, b'*')?;
        let (mut name, mut text) = (String::new(), 0u64);
        for i in 0..n {
            let len = number(line(&mut aof)?, b'$')?;
            anyhow::ensure!(aof.len() >= len + 2, "a truncated RESP bulk string");
            if i == 0 {
                name = String::from_utf8_lossy(&aof[..len]).to_uppercase();
            } else if i == 1 && !matches!(name.as_str(), "SELECT" | "MULTI" | "EXEC") {
                name = format!("{name} {}", key_kind(&String::from_utf8_lossy(&aof[..len])));
            }
            text += len as u64;
            aof = &aof[len + 2..];
        }
        let e = out.entry(name).or_default();
        e.0 += 1;
        e.1 += (start - aof.len()) as u64;
        e.2 += text;
    }
    Ok(out)
}

/// Phase 3 and 4: a primary and its replica; what replicated transactions leave, and the
/// soak.
async fn replicated(o: &Options, dir: &Path) -> anyhow::Result<()> {
    if o.replicated == 0 && o.soak.is_none() {
        return Ok(());
    }
    let (redis, pg) = crate::services::local_services(dir).await?;
    let mut conn = admin(&redis).await?;
    let secret = token::generate();
    let service = start_service(&redis.url(), &secret, |c| {
        c.forwarder.primary_url = Some(pg.primary_url());
        c.replica.url = Some(pg.replica_url());
        if let Some(retention) = o.retention {
            c.replica.retention = retention;
        }
    })
    .await?;
    let base = service.base.clone();
    let keys = Keys::new(SITE);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.clients)
        .build()?;
    let api = Api {
        http: &http,
        base: &base,
        secret: &secret,
    };
    let start = "/executed_obs_units/start";
    // Warm-up, replicated: the stream, its group, the window and the event log exist.
    let warm = write_many(api, start, 100, o.clients, Some("w"), |_| start_body()).await?;
    wait_replicated(&mut conn, &keys, &txs(&warm)?).await?;

    if o.replicated > 0 {
        println!();
        println!(
            "Replicated: {} start-observations with an Idempotency-Key, each `replicated`; per transaction",
            o.replicated
        );
        println!("| when | used_memory bytes | keys | of which the resend window `sent` (bytes) | lifecycle (MEMORY USAGE) | idempotency record |");
        println!("|---|---:|---:|---:|---:|---:|");
        let s0 = settled_size(&mut conn, &keys).await?;
        let window0 = memory(&mut conn, &keys.sent()).await?;
        let answers = write_many(api, start, o.replicated, o.clients, Some("r"), |_| {
            start_body()
        })
        .await?;
        let ids = txs(&answers)?;
        let t = Instant::now();
        wait_replicated(&mut conn, &keys, &ids).await?;
        let waited = t.elapsed();
        let report = |conn: &mut MultiplexedConnection, when: String| {
            let mut conn = conn.clone();
            let (keys, last) = (keys.clone(), ids[ids.len() - 1]);
            let n = o.replicated as f64;
            async move {
                let s = settled_size(&mut conn, &keys).await?;
                let window = memory(&mut conn, &keys.sent()).await?;
                let life = memory(&mut conn, &keys.lifecycle(last)).await?;
                let idem = idempotency_key(&mut conn, &keys, &format!("r-{}", o.replicated - 1))
                    .await
                    .ok();
                let idem = match idem {
                    Some(k) => memory(&mut conn, &k).await?.to_string(),
                    None => "gone".to_owned(),
                };
                println!(
                    "| {when} | {:.0} | {:.3} | {:.0} | {life} | {idem} |",
                    (s.memory as f64 - s0.memory as f64) / n,
                    (s.keys as f64 - s0.keys as f64) / n,
                    (window as f64 - window0 as f64) / n,
                );
                anyhow::Ok(())
            }
        };
        report(
            &mut conn,
            format!(
                "all replicated ({:.1} s after the last write)",
                waited.as_secs_f64()
            ),
        )
        .await?;
        if let Some(r) = o.retention {
            tokio::time::sleep(r + Duration::from_secs(2)).await;
            report(
                &mut conn,
                format!(
                    "after `replica.retention` ({})",
                    humantime::format_duration(r)
                ),
            )
            .await?;
        }
    }
    if o.replicated > 0 {
        bulk_to_replicated(api, &mut conn, &keys, o.bulk_files).await?;
    }
    if let Some(soak) = o.soak {
        run_soak(&http, &base, &secret, &mut conn, &keys, soak, o.rate).await?;
    }
    service.stop().await?;
    redis.stop().await;
    pg.stop().await?;
    Ok(())
}

/// The AOF one bulk registration appends from its POST until it is `replicated`, by
/// command: its buffering (staged), its forwarding, its settling and the release of its
/// records (at `RECORDS_PER_CALL` a call), with whatever the service writes meanwhile
/// (health events, the tracker's polls: a few kilobytes).
async fn bulk_to_replicated(
    api: Api<'_>,
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    files: usize,
) -> anyhow::Result<()> {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("auto-aof-rewrite-percentage")
        .arg(0)
        .query_async::<()>(conn)
        .await?;
    let unit = post(
        api.http,
        &format!("{}/executed_obs_units/start", api.base),
        api.secret,
        None,
        &start_body(),
    )
    .await?;
    wait_replicated(conn, keys, &txs(std::slice::from_ref(&unit))?).await?;
    let eou = unit["id"].as_str().context("no id")?;
    let body: Vec<Value> = (0..files)
        .map(|k| super::file_body(eou, &format!("released_{k}.fits")))
        .collect();
    let aof = aof_file(conn).await?;
    let from = std::fs::metadata(&aof)?.len();
    let answer = post(
        api.http,
        &format!("{}/raw_data_files/bulk", api.base),
        api.secret,
        None,
        &json!(body),
    )
    .await?;
    wait_replicated(conn, keys, &txs(std::slice::from_ref(&answer))?).await?;
    let tail = read_from(&aof, from)?;
    println!();
    println!(
        "AOF appended by a bulk of {files} files from its POST until replicated: {} bytes ({:.0} per file)",
        tail.len(),
        tail.len() as f64 / files as f64
    );
    println!("| command | count | bytes | of which arguments' text |");
    println!("|---|---:|---:|---:|");
    for (cmd, (n, bytes, text)) in by_command(&tail)? {
        println!("| {cmd} | {n} | {bytes} | {text} |");
    }
    Ok(())
}

fn txs(answers: &[Value]) -> anyhow::Result<Vec<Uuid>> {
    answers
        .iter()
        .map(|a| {
            a["transaction_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no transaction_id: {a}"))
        })
        .collect()
}

/// Until every one of `txs` is `replicated` (or its lifecycle is gone: `?wait=` counts that
/// as replicated too), at most 10 minutes.
async fn wait_replicated(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    txs: &[Uuid],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut from = 0;
    while from < txs.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not replicated within 10 minutes"
        );
        let chunk = &txs[from..(from + 1000).min(txs.len())];
        let mut pipe = redis::pipe();
        for tx in chunk {
            pipe.hget(keys.lifecycle(*tx), "state");
        }
        let states: Vec<Option<String>> = pipe.query_async(conn).await?;
        let done = states
            .iter()
            .take_while(|s| matches!(s.as_deref(), None | Some("replicated")))
            .count();
        from += done;
        if done < chunk.len() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The most soak writes in flight at once.
const IN_FLIGHT: usize = 128;

/// Constant-rate writes for `soak`: every fifth a start-observation, the others file
/// registrations in the latest unit started; no Idempotency-Key. Redis' size each minute.
async fn run_soak(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    soak: Duration,
    rate: f64,
) -> anyhow::Result<()> {
    let first = post(
        http,
        &format!("{base}/executed_obs_units/start"),
        secret,
        None,
        &start_body(),
    )
    .await?;
    let eou = Arc::new(Mutex::new(
        first["id"].as_str().context("no id")?.to_owned(),
    ));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let s0 = settled_size(conn, keys).await?;
    println!();
    println!(
        "Soak: {}/s for {} (one start-observation in five, the rest file registrations; no \
         Idempotency-Key), replicated as they go; `replica.retention` as configured",
        rate,
        humantime::format_duration(soak)
    );
    println!("| minute | writes acknowledged | failed | used_memory MB | keys | used_memory bytes per write | keys per write | stream `tx` | forwarded set |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(60);
    let mut tasks = tokio::task::JoinSet::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut i: u64 = 0;
    let mut minute = 0;
    while started.elapsed() < soak {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        // At most `IN_FLIGHT` writes at once (the service caps connections per peer): a
        // slow spell delays the next slots rather than opening ever more connections.
        let permit = in_flight.clone().acquire_owned().await?;
        let (http, eou, acked, lost) = (http.clone(), eou.clone(), ok.clone(), failed.clone());
        let (base, secret) = (base.to_owned(), secret.to_owned());
        let n = i;
        tasks.spawn(async move {
            let result = if n % 5 == 0 {
                post(
                    &http,
                    &format!("{base}/executed_obs_units/start"),
                    &secret,
                    None,
                    &start_body(),
                )
                .await
                .map(|a| {
                    if let Some(id) = a["id"].as_str() {
                        *eou.lock().unwrap_or_else(|e| e.into_inner()) = id.to_owned();
                    }
                })
            } else {
                let unit = eou.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let body = super::file_body(&unit, &format!("soak_{n}.fits"));
                post(
                    &http,
                    &format!("{base}/raw_data_files/"),
                    &secret,
                    None,
                    &body,
                )
                .await
                .map(|_| ())
            };
            drop(permit);
            match result {
                Ok(()) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    if lost.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("soak: first failed write: {err:#}");
                    }
                }
            }
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
        if Instant::now() >= next_report {
            minute += 1;
            next_report += Duration::from_secs(60);
            soak_row(conn, keys, minute, &ok, &failed, s0).await?;
        }
    }
    while tasks.join_next().await.is_some() {}
    if minute < soak.as_secs() / 60 || soak.as_secs() % 60 != 0 {
        soak_row(conn, keys, minute + 1, &ok, &failed, s0).await?;
    }
    println!(
        "(slots scheduled: {i} in {:.0} s, {:.0}/s written)",
        started.elapsed().as_secs_f64(),
        ok.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn soak_row(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    minute: u64,
    ok: &AtomicU64,
    failed: &AtomicU64,
    s0: Size,
) -> anyhow::Result<()> {
    let s = size(conn).await?;
    let stream = count(conn, "XLEN", &keys.stream()).await?;
    let forwarded = count(conn, "ZCARD", &keys.forwarded()).await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let per = |a: u64, b: u64| (a as f64 - b as f64) / ok.max(1) as f64;
    println!(
        "| {minute} | {ok} | {failed} | {:.1} | {} | {:.0} | {:.3} | {stream} | {forwarded} |",
        s.memory as f64 / 1e6,
        s.keys,
        per(s.memory, s0.memory),
        per(s.keys, s0.keys)
    );
    Ok(())
}

/// The commit this binary runs on, if `git` answers here.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aof_tail_is_counted_by_command() {
        let aof = b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n*2\r\n$4\r\nincr\r\n$2\r\nkk\r\n";
        let by = by_command(aof).expect("RESP");
        assert_eq!(by["MULTI"], (1, 15, 5));
        assert_eq!(by["INCR k"].0, 1);
        assert_eq!(by["INCR kk"].0, 1);
        assert_eq!(by["EXEC"].0, 1);
        assert!(by_command(b"*1\r\n$5\r\nMU").is_err());
    }
}
