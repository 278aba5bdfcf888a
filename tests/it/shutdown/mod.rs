//! Graceful shutdown of the real binary (`ops-db-api serve`): SIGTERM under load, with
//! clients on both facades writing with idempotency keys. The invariants: the process
//! exits 0 within the grace period; no client sees its connection dropped (reset or EOF
//! after the request went out) for a write that was stored; no stored write is answered
//! with an error; after a restart every retry with the same key gets the first answer;
//! and once drained, every write is in the primary exactly once.

mod clients;
mod in_flight;
mod second;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_db_actors::domain::IdempotencyKey;
use ops_db_actors::overlay::Keys;
use ops_db_devkit::fault_proxy::FaultProxy;
use ops_db_devkit::local_pg::PgUrl;
use ops_db_devkit::ports::free_port;
use ops_db_service::token;
use serde_json::Value;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::helpers::{eventually, tempdir, uuid, TestRedis};
use crate::pg::TestPg;
use crate::site::Site;
use clients::{http_client, http_write, tcp_client, Facade, Op, Outcome, TcpConn, Write};

/// `shutdown.grace` by default: the whole stop must fit in it when nothing is slow.
const GRACE: Duration = Duration::from_secs(10);
const CLIENTS_PER_FACADE: usize = 8;
/// Writes answered before the SIGTERM (the second half with the link cut).
const WRITES: usize = 600;
/// The token's name: idempotency keys are scoped by it.
const CLIENT: &str = "writer";
const LEDGER: &str = "SELECT transaction_id FROM opsdb_api.applied_transaction";

/// The binary running `serve`, its stderr in a file.
struct Service {
    child: Child,
}

impl Service {
    async fn start(config: &Path, log: &Path, http: &str) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ops-db-api"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ops-db-api serve");
        let ready = format!("{http}/health/ready");
        eventually("the service is ready", Duration::from_secs(60), || async {
            let r = reqwest::get(&ready).await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        Self { child }
    }

    /// Sends it `SIG{name}`.
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// SIGTERM, then its exit status and how long it took (`None`: still running after
    /// `within`; it is then killed).
    async fn terminate(mut self, within: Duration) -> (Option<ExitStatus>, Duration) {
        self.signal("TERM");
        let started = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait()).await;
        let took = started.elapsed();
        match status {
            Ok(status) => (Some(status.expect("wait")), took),
            Err(_) => {
                let _ = self.child.kill().await;
                (None, took)
            }
        }
    }
}

/// Waits, at most `within`, until a write is held by a pause (`CLIENT PAUSE WRITE`): the
/// buffer's connection is blocked (`CLIENT LIST`: its name and flag `b`). Redis' count of
/// blocked clients would not do: the forwarder's lease renewal, paused as well, may be the
/// one it counts.
async fn a_write_is_held(redis: &TestRedis, within: Duration) {
    let conn = redis.conn().await;
    let buffer = format!("name={}", ops_db_actors::redis_conn::name("buffer"));
    eventually("a write waits in Redis", within, || {
        let mut conn = conn.clone();
        let buffer = buffer.clone();
        async move {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .ok()?;
            clients
                .lines()
                .any(|client| {
                    let fields: Vec<&str> = client.split(' ').collect();
                    fields.contains(&buffer.as_str()) && fields.contains(&"flags=b")
                })
                .then_some(())
        }
    })
    .await;
}

struct Addrs {
    http: String,
    tcp: std::net::SocketAddr,
}

/// The restart policy body of the forwarder and the replica tracker: the test sites'
/// quick restarts (`crate::site::fast_restarts`), in the file the binary loads.
const FAST_RESTARTS: &str =
    "backoff_base = \"20ms\"\nbackoff_cap = \"200ms\"\nreset_after = \"60s\"\n";

/// The service's config file: the binary loads it as a site's (TOML, the real loading).
fn config(
    site: &str,
    addrs: &Addrs,
    redis: &str,
    primary: &str,
    replica: &str,
    hash: &str,
) -> String {
    format!(
        "[site]\nname = \"{site}\"\n\
         [http]\nlisten = \"{http}\"\n\
         [tcp]\nlisten = \"{tcp}\"\n\
         [redis]\nurl = \"{redis}\"\n\
         [forwarder]\nprimary_url = \"{primary}\"\nlinger = \"5ms\"\nconnect_timeout = \"2s\"\n\
         [forwarder.restart]\n{FAST_RESTARTS}\
         [replica]\nurl = \"{replica}\"\npoll_interval = \"50ms\"\nconnect_timeout = \"2s\"\n\
         [replica.restart]\n{FAST_RESTARTS}\
         [auth]\ndatabase = false\n\
         tokens = [{{ name = \"{CLIENT}\", sha256 = \"{hash}\", scopes = [\"write\", \"read\"] }}]\n\
         [log]\nlevel = \"info\"\n",
        http = addrs.http.trim_start_matches("http://"),
        tcp = addrs.tcp,
    )
}

/// The first answer Redis keeps for each key that was stored (`resp`'s `body`).
async fn stored(redis: &TestRedis, keys: &Keys, writes: &[Write]) -> HashMap<String, Value> {
    let mut conn = redis.conn().await;
    let mut found = HashMap::new();
    for chunk in writes.chunks(500) {
        let mut pipe = redis::pipe();
        for w in chunk {
            let scoped = IdempotencyKey::parse(&w.key)
                .expect("key")
                .for_client(CLIENT);
            pipe.get(keys.idempotency(scoped.as_str()));
        }
        let records: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await.expect("get");
        for (w, record) in chunk.iter().zip(records) {
            if let Some(record) = record {
                // The fingerprint (32 hex), then the first answer (packed JSON).
                let resp = ops_db_actors::body::unpack(&record[32..]).expect("packed");
                let ack: Value = serde_json::from_slice(&resp).expect("stored answer");
                found.insert(w.key.clone(), ack["body"].clone());
            }
        }
    }
    found
}

/// Every write sent again with its key, through the facade it first went through, by as
/// many clients as there were: the answers by key.
async fn retry_all(writes: &[Write], addrs: &Addrs, token: &str) -> HashMap<String, Outcome> {
    let mut by_client: HashMap<String, Vec<Write>> = HashMap::new();
    for w in writes {
        let client = w.key.split('-').next().expect("client").to_owned();
        by_client.entry(client).or_default().push(w.clone());
    }
    let tasks: Vec<_> = by_client
        .into_values()
        .map(|writes| {
            let (http, tcp, token) = (addrs.http.clone(), addrs.tcp, token.to_owned());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut conn = TcpConn::connect(tcp, &token).await.expect("tcp connect");
                let mut answers = Vec::new();
                for mut w in writes {
                    let outcome = match w.via {
                        Facade::Http => http_write(&client, &http, &token, &w)
                            .await
                            .expect("connected"),
                        Facade::Tcp => {
                            conn.exchange(&token, std::slice::from_mut(&mut w)).await;
                            w.outcome
                        }
                    };
                    answers.push((w.key, outcome));
                }
                answers
            })
        })
        .collect();
    let mut answers = HashMap::new();
    for task in tasks {
        answers.extend(task.await.expect("retry task"));
    }
    answers
}

/// What went wrong with one write between its first attempt and its retry.
fn check_write(w: &Write, stored: Option<&Value>, retry: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    match (&w.outcome, stored) {
        (Outcome::Dropped(why), Some(_)) => {
            problems.push(format!(
                "{}: stored, but its connection was dropped ({why})",
                w.key
            ));
        }
        (Outcome::Answered { status: 201, body }, Some(first)) if body != first => {
            problems.push(format!("{}: answered {body}, stored {first}", w.key));
        }
        (Outcome::Answered { status: 201, .. }, None) => {
            problems.push(format!("{}: acknowledged, not stored", w.key));
        }
        (Outcome::Answered { status, body }, Some(_)) if *status != 201 => {
            problems.push(format!("{}: stored, but answered {status} {body}", w.key));
        }
        _ => {}
    }
    match retry {
        Outcome::Answered { status: 201, body } => {
            let first = match &w.outcome {
                Outcome::Answered { status: 201, body } => Some(body),
                _ => stored,
            };
            if let Some(first) = first.filter(|first| *first != body) {
                problems.push(format!("{}: retry answered {body}, first {first}", w.key));
            }
        }
        other => problems.push(format!("{}: retry got {other:?}", w.key)),
    }
    problems
}

async fn column(pg: &TestPg, sql: &str) -> Vec<Uuid> {
    sqlx::query_scalar(sql)
        .fetch_all(&mut pg.primary().await)
        .await
        .expect("query the primary")
}

/// Every record and transaction of the final answers is in the primary exactly once, and
/// nothing else is.
async fn exactly_once(
    pg: &TestPg,
    writes: &[Write],
    answers: &HashMap<String, Outcome>,
) -> Vec<String> {
    let (mut txs, mut observations, mut files) = (HashSet::new(), HashSet::new(), HashSet::new());
    for w in writes {
        let Outcome::Answered { body, .. } = &answers[&w.key] else {
            continue;
        };
        txs.insert(uuid(&body["transaction_id"]));
        match w.op {
            Op::Start => {
                observations.insert(uuid(&body["id"]));
            }
            Op::Bulk => files.extend(body["ids"].as_array().expect("ids").iter().map(uuid)),
        }
    }
    let mut problems = Vec::new();
    for (sql, want) in [
        (LEDGER, &txs),
        ("SELECT id FROM executed_obs_unit", &observations),
        ("SELECT id FROM raw_data_file", &files),
    ] {
        let rows = column(pg, sql).await;
        let distinct: HashSet<Uuid> = rows.iter().copied().collect();
        if rows.len() != distinct.len() || &distinct != want {
            problems.push(format!(
                "{sql}: {} rows, {} distinct, {} expected, {} missing",
                rows.len(),
                distinct.len(),
                want.len(),
                want.difference(&distinct).count()
            ));
        }
    }
    problems
}

/// What the link to the primary does from halfway through the writes to the restart.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// Refused: the forwarder backs off, nothing of it is in flight at the stop.
    Cut,
    /// Silent: the forwarder's batch hangs at the stop and is abandoned.
    Blackhole,
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_16_writing_clients_answers_every_stored_write_and_applies_each_once() {
    sigterm_under_load(Link::Cut).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_batch_hanging_on_the_link_abandons_it_and_replays_it_exactly_once() {
    sigterm_under_load(Link::Blackhole).await;
}

async fn sigterm_under_load(link: Link) {
    let redis = TestRedis::start().await;
    let pg = Site::primary_with_replica().await;
    let upstream = format!("127.0.0.1:{}", pg.primary_port())
        .parse()
        .expect("addr");
    let wan = FaultProxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("wan proxy");
    let primary_url = PgUrl {
        port: wan.addr().port(),
        ..pg.primary_parts()
    }
    .to_string();
    let dir = tempdir::Dir::new();
    let addrs = Addrs {
        http: format!("http://127.0.0.1:{}", free_port().expect("port")),
        tcp: format!("127.0.0.1:{}", free_port().expect("port"))
            .parse()
            .expect("addr"),
    };
    let site = format!("t{:08x}", rand::random::<u32>());
    let token = token::generate();
    let config_path: PathBuf = dir.0.join("service.toml");
    let toml = config(
        &site,
        &addrs,
        &redis.url(),
        &primary_url,
        &pg.replica_url(),
        &token::hash(&token),
    );
    std::fs::write(&config_path, toml).expect("write config");
    let log = dir.0.join("service.log");
    let service = Service::start(&config_path, &log, &addrs.http).await;

    let progress = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS_PER_FACADE {
        let p = Arc::clone(&progress);
        tasks.push(tokio::spawn(http_client(
            i,
            addrs.http.clone(),
            token.clone(),
            p,
        )));
        let p = Arc::clone(&progress);
        tasks.push(tokio::spawn(tcp_client(i, addrs.tcp, token.clone(), p)));
    }
    // Half the writes with the link up, half with it cut (the forwarder backing off).
    for written in [WRITES / 2, WRITES] {
        if written == WRITES {
            match link {
                Link::Cut => wan.cut(),
                Link::Blackhole => wan.blackhole(),
            }
        }
        // Counts, not time: a loaded machine writes slower (see MAX_RUN).
        eventually("clients write", Duration::from_secs(120), || async {
            (progress.load(Ordering::Relaxed) >= written).then_some(())
        })
        .await;
    }
    let (exit, took) = service.terminate(GRACE * 3).await;
    let mut writes = Vec::new();
    for task in tasks {
        writes.extend(task.await.expect("client task"));
    }
    let keys = Keys::new(&site);
    let stored = stored(&redis, &keys, &writes).await;
    // Its forwarder was backing off (cut) or hung in a batch (blackhole) and never stopped
    // cleanly: the tree gave the lease up all the same, so the restart forwards at once.
    let lease: bool = redis::cmd("EXISTS")
        .arg(keys.forwarder_lease())
        .query_async(&mut redis.conn().await)
        .await
        .expect("EXISTS");
    assert!(
        !lease,
        "the stopped instance left its forwarder lease behind"
    );

    let phase = Instant::now();
    let restarted = Service::start(&config_path, &log, &addrs.http).await;
    let retries = retry_all(&writes, &addrs, &token).await;
    println!("restarted and retried in {:?}", phase.elapsed());
    wan.heal();
    eventually(
        "every write is applied",
        Duration::from_secs(60),
        || async { (column(&pg, LEDGER).await.len() >= writes.len()).then_some(()) },
    )
    .await;
    println!("drained in {:?}", phase.elapsed());
    let (second_exit, _) = restarted.terminate(GRACE * 3).await;
    for w in writes.iter().filter(|w| w.status() != Some(201)) {
        println!("{} {:?}: {:?}", w.key, w.op, w.outcome);
    }

    let mut problems = Vec::new();
    for w in &writes {
        problems.extend(check_write(w, stored.get(&w.key), &retries[&w.key]));
    }
    problems.extend(exactly_once(&pg, &writes, &retries).await);
    let acknowledged = writes.iter().filter(|w| w.status() == Some(201)).count();
    let dropped = writes.iter().filter(|w| w.status().is_none()).count();
    let errors = writes
        .iter()
        .filter(|w| w.status().is_some_and(|s| s != 201))
        .count();
    println!(
        "{} writes: {acknowledged} acknowledged, {errors} refused, {dropped} dropped, {} stored; \
         SIGTERM to exit {took:?}",
        writes.len(),
        stored.len()
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n--- service log ---\n{log}",
        problems.len(),
        problems.join("\n")
    );
    for (exit, which) in [(exit, "first"), (second_exit, "second")] {
        let status = exit.unwrap_or_else(|| {
            panic!("the {which} service still ran after {:?}\n{log}", GRACE * 3)
        });
        assert!(
            status.success(),
            "the {which} service exited {status}\n{log}"
        );
    }
    assert!(took < GRACE, "SIGTERM to exit took {took:?}");
    assert!(acknowledged >= WRITES, "the clients wrote under load");
}
