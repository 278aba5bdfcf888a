//! `ops-db-api bench events`: what events cost ingest, and how fast they reach websocket
//! clients. One run against one durable Redis, the same HTTP load in every phase: first
//! `--rounds` rounds of events disabled and events on with no client, interleaved (off, on,
//! then on, off, and so on, so that a drift of the machine over the run weighs on both
//! sides alike); then events on with `--ws-clients` websocket clients, each receiving every
//! event. The fan-out delay is the time from an event's emission (`at`, unix ms) to its
//! arrival at a client: millisecond resolution.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use hdrhistogram::Histogram;
use ops_db_service::config::Config;
use ops_db_service::startup::Application;
use ops_db_service::token;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::ingest::load;
use crate::local_redis::LocalRedis;
use crate::ports::free_port;

pub async fn run(
    ws_clients: usize,
    rounds: usize,
    writers: usize,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    let dir = dir.join(format!("redis-{}", std::process::id()));
    let redis = LocalRedis::start(&dir, free_port()?).await?;
    let secret = token::generate();
    println!(
        "ops-db-api bench events: {writers} HTTP writers for {duration:?} per phase, \
         POST /raw_data_files/, Redis appendfsync always"
    );
    println!("| phase | events | websocket clients | writes/s | write p50 ms | write p99 ms | events received | fan-out p50 ms | fan-out p99 ms | clients closed |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (off, on) = (("off", false, 0), ("on", true, 0));
    let mut phases: Vec<_> = (0..rounds)
        .flat_map(|round| if round % 2 == 0 { [off, on] } else { [on, off] })
        .collect();
    if ws_clients > 0 {
        phases.push(("on", true, ws_clients));
    }
    // Writes/s of the phases without clients: events off, events on.
    let (mut rate_off, mut rate_on) = (Vec::new(), Vec::new());
    for (number, (label, enabled, clients)) in phases.into_iter().enumerate() {
        empty(&redis.admin_url()).await?;
        let cap = clients + writers + 64;
        let config = super::service_config("bench-events", &redis.url(), &secret, |c| {
            c.http.max_connections = cap;
            c.http.max_connections_per_peer = cap;
            c.events.enabled = enabled;
            c.events.max_clients = cap;
        })?;
        let rate = phase(
            number + 1,
            label,
            config,
            &secret,
            clients,
            writers,
            duration,
        )
        .await?;
        if clients == 0 {
            if enabled { &mut rate_on } else { &mut rate_off }.push(rate);
        }
    }
    if !rate_off.is_empty() && rate_off.len() == rate_on.len() {
        let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
        let (off, on) = (mean(&rate_off), mean(&rate_on));
        println!(
            "\nevents on, no client, against off over {} interleaved rounds: {:.0} against {:.0} writes/s, {:+.1}%",
            rate_off.len(),
            on,
            off,
            (on / off - 1.0) * 100.0
        );
    }
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Every phase starts from the same Redis: empty, its AOF rewritten and no rewrite under
/// way (otherwise a rewrite triggered by the previous phases' writes lands in whichever
/// phase it happens to, and decides the comparison).
async fn empty(url: &str) -> anyhow::Result<()> {
    // Emptying a phase's Redis (and its AOF) takes seconds: a reply timeout to match.
    let slow = Duration::from_secs(60);
    let mut conn = ops_db_actors::redis_conn::open_url(url, "bench", slow, slow).await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    redis::cmd("BGREWRITEAOF")
        .query_async::<()>(&mut conn)
        .await?;
    for _ in 0..600 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await?;
        let busy = |field: &str| info.lines().any(|l| l.trim() == format!("{field}:1"));
        if !busy("aof_rewrite_in_progress") && !busy("aof_rewrite_scheduled") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("Redis did not finish rewriting its AOF within 60 s")
}

/// What the websocket clients saw.
struct Fanout {
    delay_ms: Mutex<Histogram<u64>>,
    received: AtomicU64,
    closed: AtomicU64,
}

impl Fanout {
    fn histogram(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.delay_ms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One phase: a fresh service, the load, the clients; prints its row and returns writes/s.
async fn phase(
    number: usize,
    label: &str,
    config: Config,
    secret: &str,
    clients: usize,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let app = Application::build(config).await?;
    let addr = app.http_addr();
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let fanout = Arc::new(Fanout {
        delay_ms: Mutex::new(Histogram::new_with_bounds(1, 600_000, 3)?),
        received: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    });
    let listening = CancellationToken::new();
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let url = format!("ws://{addr}/ws/events");
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {secret}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("websocket client")?;
        sockets.push(tokio::spawn(listen(
            ws,
            Arc::clone(&fanout),
            listening.clone(),
        )));
    }
    let url = format!("http://{addr}/raw_data_files/");
    let _warm = load(&url, secret, writers, Duration::from_secs(1)).await?;
    // Count only what the measured load causes.
    fanout.received.store(0, Ordering::Relaxed);
    fanout.histogram().reset();
    let o = load(&url, secret, writers, duration).await?;
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    listening.cancel();
    for socket in sockets {
        let _ = socket.await;
    }
    let ms = |q: f64| o.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let (fan50, fan99) = {
        let delay = fanout.histogram();
        if delay.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                delay.value_at_quantile(0.5).to_string(),
                delay.value_at_quantile(0.99).to_string(),
            )
        }
    };
    let rate = o.ok as f64 / o.elapsed.as_secs_f64();
    println!(
        "| {number} | {label} | {clients} | {rate:.0} | {:.3} | {:.3} | {} | {fan50} | {fan99} | {} |",
        ms(0.5),
        ms(0.99),
        fanout.received.load(Ordering::Relaxed),
        fanout.closed.load(Ordering::Relaxed),
    );
    stop.cancel();
    server.await.context("server task")??;
    Ok(rate)
}

/// One websocket client: records each event's delay until `stop`.
async fn listen(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    fanout: Arc<Fanout>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let now = chrono::Utc::now().timestamp_millis();
                let at = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|e| e["at"].as_i64());
                if let Some(at) = at {
                    let delay = u64::try_from(now - at).unwrap_or(0).max(1);
                    fanout.histogram().saturating_record(delay);
                }
                fanout.received.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                fanout.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    let _ = ws.close(None).await;
}
