//! `ops-db-api bench outage`: a long outage end to end. The WAN link is cut while
//! `transactions` writes (bulk registrations among them) are buffered, the local replica is
//! down for part of that time, then both come back; how long the backlog takes to reach the
//! primary and the replica, what it costs in memory, and what it does to ingest latency.
//!
//! One fresh Redis, primary and replica; the service (forwarder behind the fault proxy with
//! RTT/2 delay each way, replica tracker on the local replica) runs throughout. A probe
//! writer sends one file registration every 10 ms from the start to the end and records
//! each one's latency in the phase it was sent in:
//!
//! 1. `before`: the link up, nothing else happening (`--quiet` long);
//! 2. `during`: the link cut; `clients` writers buffer the transactions (at `--rate` per
//!    second together, or as fast as they can); the replica is stopped at `--replica-stop`
//!    of the writes;
//! 3. `draining`: the link heals (the replica restarts here with `--replica-start heal`)
//!    until every transaction buffered before the heal has left the stream (forwarded);
//! 4. `tracker idle`: until the replica tracker marks a transaction `replicated` again
//!    (with `--replica-start drained` the replica restarts at the start of this phase, and
//!    the tracker first sits out its backoff: a backlog forwarded while the replica was
//!    down, marked and released once it is back);
//! 5. `replicating`: until every transaction buffered before the heal is `replicated`;
//! 6. `after`: everything replicated, `--quiet` long.
//!
//! Every write carries an Idempotency-Key and is sent again with it after a 503, as a
//! careful client does: a 503 after a timeout may come for a write that was stored. Then
//! it checks the outcome and fails if anything is off: every acknowledged transaction is
//! in the primary's ledger exactly once (and nothing else is), the rows are there, every
//! lifecycle says `replicated`, the stream, the forwarded set and the dead letters are
//! empty, and no overlay record or index entry of the run is left.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use ops_db_actors::domain::Table;
use ops_db_actors::lsn::Lsn;
use ops_db_actors::overlay::{Keys, TxState};
use ops_db_actors::tree::{FORWARDER, REPLICA};
use ops_db_service::startup::Application;
use ops_db_service::token;

use super::{file_body, load_average, ms, proc_status_mb, redis_info, rss_mb};
use crate::fault_proxy::FaultProxy;
use crate::slow_log::{self, SlowCall};

const SITE: &str = "bench";
/// The probe writer's pace: one write per interval (the next one at once if a write took
/// longer).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Single file registrations per executed obs unit before a writer finishes it.
const FILES_PER_UNIT: usize = 100;
/// The seeded obs units (1 to 10) the writers start executed obs units of.
const OBS_UNITS: usize = 10;
/// Most times a load write answered 503 is sent again (with the same Idempotency-Key)
/// before it counts as an error.
const MAX_RETRIES: usize = 100;
/// Longest wait for any phase to end.
const PHASE_TIMEOUT: Duration = Duration::from_secs(1800);

/// When the stopped replica is started again.
#[derive(Clone, Copy, Debug)]
pub enum ReplicaStart {
    /// At this fraction of the writes (at or after the stop).
    Writes(f64),
    /// Together with the link.
    Heal,
    /// Once the backlog has been forwarded: it reaches the primary with the replica down.
    Drained,
}

impl FromStr for ReplicaStart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "heal" => Ok(Self::Heal),
            "drained" => Ok(Self::Drained),
            _ => match s.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Ok(Self::Writes(f)),
                _ => Err(format!(
                    "{s:?}: expected `heal`, `drained` or a fraction of the writes (0 to 1)"
                )),
            },
        }
    }
}

impl std::fmt::Display for ReplicaStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Writes(x) => write!(f, "at {:.0}% of the writes", x * 100.0),
            Self::Heal => f.write_str("with the link"),
            Self::Drained => f.write_str("once the backlog was forwarded"),
        }
    }
}

/// `ops-db-api bench outage`'s options.
#[derive(clap::Args)]
pub struct Options {
    /// Transactions written while the link is cut, bulk registrations included.
    #[arg(long, default_value_t = 100_000)]
    pub transactions: usize,
    /// Bulk registrations among them, spread evenly through the writes.
    #[arg(long, default_value_t = 100)]
    pub bulk: usize,
    /// Files per bulk registration (at most buffer.max_bulk_files, 1000).
    #[arg(long, default_value_t = 1000)]
    pub bulk_files: usize,
    /// Round-trip time of the emulated link.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub rtt: Duration,
    /// Concurrent writers of the transactions.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Transactions per second the writers keep to together; 0: as fast as they can.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long the probe writer measures before the cut, and again once everything
    /// is replicated (2,000 writes in 20 s: a p99 of 20 samples).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub quiet: Duration,
    /// The replica stops when this fraction of the writes is acknowledged.
    #[arg(long, default_value_t = 0.25)]
    pub replica_stop: f64,
    /// When it starts again: `heal` (with the link), `drained` (once the backlog is
    /// forwarded: the replica is down while it reaches the primary), or a fraction of
    /// the writes.
    #[arg(long, default_value = "heal")]
    pub replica_start: ReplicaStart,
    #[arg(long, default_value = "target/bench")]
    pub dir: PathBuf,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(o.transactions > 0, "--transactions must be at least 1");
    anyhow::ensure!(o.rate >= 0.0, "--rate must not be negative");
    anyhow::ensure!(
        o.bulk * 4 <= o.transactions,
        "--bulk {} is more than a quarter of --transactions {}",
        o.bulk,
        o.transactions
    );
    anyhow::ensure!(
        (1..=1000).contains(&o.bulk_files),
        "--bulk-files must be 1 to 1000 (buffer.max_bulk_files)"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&o.replica_stop),
        "--replica-stop is a fraction of the writes, 0 to 1"
    );
    if let ReplicaStart::Writes(f) = o.replica_start {
        anyhow::ensure!(
            f >= o.replica_stop,
            "--replica-start {f} is before --replica-stop {}",
            o.replica_stop
        );
    }
    let dir = o.dir.join(format!("outage-{}", std::process::id()));
    let result = one(&o, &dir).await;
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("servers' data and logs left in {}", dir.display()),
    }
    result
}

/// The probe's phases, in order.
const PHASES: [&str; 6] = [
    "before",
    "during",
    "draining",
    "tracker idle",
    "replicating",
    "after",
];
const BEFORE: usize = 0;
const DURING: usize = 1;
const DRAINING: usize = 2;
const TRACKER_IDLE: usize = 3;
const REPLICATING: usize = 4;
const AFTER: usize = 5;

/// What the background tasks read: the phase and how many load writes are acknowledged.
#[derive(Default)]
struct Progress {
    phase: AtomicUsize,
    written: AtomicUsize,
}

/// The services of one run, the service itself and what the phases share.
struct Run<'o> {
    o: &'o Options,
    t0: Instant,
    redis: crate::local_redis::LocalRedis,
    pg: crate::local_pg::LocalPostgres,
    wan: FaultProxy,
    tree: Arc<ops_db_actors::tree::Tree>,
    base: String,
    secret: String,
    stop: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    keys: Keys,
    conn: MultiplexedConnection,
    progress: Arc<Progress>,
    /// When each phase started, and the end of the last.
    phase_started: Vec<Instant>,
    replica: ReplicaTimes,
}

/// When the replica was asked to stop and to start (after the cut), and how long it took to
/// accept connections again.
#[derive(Default)]
struct ReplicaTimes {
    stopped: Option<Duration>,
    started: Option<Duration>,
    start_took: Duration,
}

/// What phase 1 leaves running: the probe writer.
struct Before {
    probe_eou: Uuid,
    probe_start_tx: Uuid,
    probing: CancellationToken,
    probe: JoinHandle<anyhow::Result<Probed>>,
    sampling: CancellationToken,
    sampler: JoinHandle<anyhow::Result<Peaks>>,
    memory_before: u64,
    rss_before: f64,
}

/// What phase 2 wrote.
struct During {
    cut: Instant,
    written: Written,
    written_in: Duration,
    memory_at_heal: u64,
}

/// Phase 3: from the heal to the stream drained of what was buffered before it.
struct Drained {
    healed: Instant,
    healed_ms: u64,
    /// The last transaction buffered before the heal.
    mark: Uuid,
    polled: Duration,
    batches: u64,
    round_trips: u64,
}

/// What is read at the end, once everything is replicated and settled.
struct End {
    probe_eou: Uuid,
    probe_start_tx: Uuid,
    memory_before: u64,
    rss_before: f64,
    probed: Probed,
    peaks: Peaks,
    memory_final: HashMap<String, u64>,
    rss_final: f64,
    rss_hwm: f64,
    slow: String,
    latency: String,
    forwarder_restarts: u64,
    replica_restarts: u64,
    replicated_polled: Duration,
}

async fn one(o: &Options, dir: &Path) -> anyhow::Result<()> {
    let mut run = Run::start(o, dir).await?;
    let before = run.before().await?;
    let during = run.during().await?;
    let drained = run.drain(&during).await?;
    run.tracker_idle(&drained).await?;
    let end = run.replicate_and_end(before, &drained).await?;
    run.check_and_report(during, drained, end).await
}

impl<'o> Run<'o> {
    async fn start(o: &'o Options, dir: &Path) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let (redis, pg) = crate::services::local_services(dir).await?;
        let primary = ([127, 0, 0, 1], pg.primary_port()).into();
        let wan = FaultProxy::start(([127, 0, 0, 1], 0).into(), primary).await?;
        wan.set_delay(o.rtt / 2);
        let secret = token::generate();
        let config = super::service_config(SITE, &redis.url(), &secret, |c| {
            c.forwarder.primary_url = Some(super::through(&pg, &wan));
            c.replica.url = Some(pg.replica_url());
        })?;
        let app = Application::build(config).await?;
        let tree = app.tree();
        let base = format!("http://{}", app.http_addr());
        let stop = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone()));
        // Its replies may be slow on a busy machine (the default timeout is 500 ms).
        let mut conn = redis::Client::open(redis.admin_url())?
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
        watch_slow_calls(&mut conn).await?;
        println!(
            "ops-db-api bench outage: {} transactions ({} bulk registrations of {} files) from {} \
             clients{}, link cut, RTT {} ms; replica stopped at {:.0}% of the writes, started {}; \
             load average {}",
            o.transactions,
            o.bulk,
            o.bulk_files,
            o.clients,
            if o.rate > 0.0 {
                format!(" at {}/s", o.rate)
            } else {
                String::new()
            },
            o.rtt.as_millis(),
            o.replica_stop * 100.0,
            o.replica_start,
            load_average()
        );
        Ok(Self {
            o,
            t0,
            redis,
            pg,
            wan,
            tree,
            base,
            secret,
            stop,
            server,
            keys: Keys::new(SITE),
            conn,
            progress: Arc::new(Progress::default()),
            phase_started: Vec::new(),
            replica: ReplicaTimes::default(),
        })
    }

    /// Marks the start of `phase`.
    fn enter(&mut self, phase: usize, at: Instant) {
        self.progress.phase.store(phase, Ordering::Relaxed);
        self.phase_started.push(at);
    }

    /// 1. Before: the link is up and nothing else happens; the probe writer and the
    ///    sampler start.
    async fn before(&mut self) -> anyhow::Result<Before> {
        let sampling = CancellationToken::new();
        let sampler = tokio::spawn(sample(
            self.conn.clone(),
            self.keys.clone(),
            self.progress.clone(),
            self.o.transactions,
            sampling.clone(),
        ));
        let (probe_eou, probe_start_tx) = super::start_obs_unit(&self.base, &self.secret).await?;
        let probing = CancellationToken::new();
        let probe = tokio::spawn(probe(
            format!("{}/raw_data_files/", self.base),
            self.secret.clone(),
            probe_eou.to_string(),
            self.progress.clone(),
            probing.clone(),
        ));
        self.enter(BEFORE, Instant::now());
        let memory_before = used_memory(&mut self.conn).await?;
        let rss_before = rss_mb();
        tokio::time::sleep(self.o.quiet).await;
        Ok(Before {
            probe_eou,
            probe_start_tx,
            probing,
            probe,
            sampling,
            sampler,
            memory_before,
            rss_before,
        })
    }

    /// 2. During: the link is cut while the load is written; the replica stops part-way
    ///    (and starts again at `--replica-start` writes).
    async fn during(&mut self) -> anyhow::Result<During> {
        let o = self.o;
        self.wan.cut();
        let cut = Instant::now();
        self.enter(DURING, cut);
        let load = Load::new(o, &self.base, &self.secret)?;
        let writers: Vec<_> = (0..o.clients)
            .map(|w| tokio::spawn(load.clone().writer(w, self.progress.clone())))
            .collect();
        let n = o.transactions as f64;
        while !writers.iter().all(JoinHandle::is_finished) {
            let written = self.progress.written.load(Ordering::Relaxed) as f64;
            if self.replica.stopped.is_none() && written >= o.replica_stop * n {
                self.replica.stopped = Some(cut.elapsed());
                self.pg.stop_replica().await?;
            }
            if let ReplicaStart::Writes(f) = o.replica_start {
                if self.replica.stopped.is_some()
                    && self.replica.started.is_none()
                    && written >= f * n
                {
                    self.start_replica(cut).await?;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut written = Written::new()?;
        for w in writers {
            written.add(w.await??)?;
        }
        if self.replica.stopped.is_none() {
            // Fewer acknowledged writes than asked for (errors): stop it now all the same.
            self.replica.stopped = Some(cut.elapsed());
            self.pg.stop_replica().await?;
        }
        Ok(During {
            cut,
            written,
            written_in: cut.elapsed(),
            memory_at_heal: used_memory(&mut self.conn).await?,
        })
    }

    /// Starts the replica, noting when (after `cut`) and how long it took.
    async fn start_replica(&mut self, cut: Instant) -> anyhow::Result<()> {
        let at = cut.elapsed();
        self.pg.start_replica().await?;
        self.replica.started = Some(at);
        self.replica.start_took = cut.elapsed() - at;
        Ok(())
    }

    /// 3. Draining: the link heals (the clock starts) and, with `--replica-start heal`,
    ///    the replica starts; until the last transaction buffered before the heal has left
    ///    the stream.
    async fn drain(&mut self, during: &During) -> anyhow::Result<Drained> {
        let fm = &self.tree.forwarder_metrics;
        let (batches_before, trips_before) = (fm.batches.get(), fm.round_trips.get());
        let mark = last_entry(&mut self.conn, &self.keys).await?;
        let healed = Instant::now();
        let healed_ms = unix_ms();
        self.wan.heal();
        self.enter(DRAINING, healed);
        let heal_start =
            matches!(self.o.replica_start, ReplicaStart::Heal) && self.replica.started.is_none();
        let mut drain_conn = self.conn.clone();
        let keys = self.keys.clone();
        let cut = during.cut;
        let pg = &mut self.pg;
        let (started, drained) = tokio::join!(
            async {
                if heal_start {
                    let at = cut.elapsed();
                    pg.start_replica().await?;
                    return anyhow::Ok(Some((at, cut.elapsed() - at)));
                }
                Ok(None)
            },
            wait_drained(&mut drain_conn, &keys, mark),
        );
        if let Some((at, took)) = started? {
            (self.replica.started, self.replica.start_took) = (Some(at), took);
        }
        let fm = &self.tree.forwarder_metrics;
        Ok(Drained {
            healed,
            healed_ms,
            mark,
            polled: drained?.duration_since(healed),
            batches: fm.batches.get() - batches_before,
            round_trips: fm.round_trips.get() - trips_before,
        })
    }

    /// 4. Tracker idle: the backlog is forwarded; until the replica tracker marks again
    ///    (with `--replica-start drained` the replica starts now and the tracker first sits
    ///    out its backoff).
    async fn tracker_idle(&mut self, drained: &Drained) -> anyhow::Result<()> {
        self.enter(TRACKER_IDLE, Instant::now());
        let tree = Arc::clone(&self.tree);
        let marked = &tree.replica_metrics.marked;
        let marked_at_drain = marked.get();
        if self.replica.started.is_none() {
            let cut = self.phase_started[DURING];
            self.start_replica(cut).await?;
        }
        while marked.get() == marked_at_drain {
            anyhow::ensure!(
                drained.healed.elapsed() < PHASE_TIMEOUT,
                "the replica tracker never marked a transaction again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// 5. Replicating: every transaction buffered before the heal becomes `replicated`;
    ///    6. after: the probe goes on a while. Then what the end reads.
    async fn replicate_and_end(
        &mut self,
        before: Before,
        drained: &Drained,
    ) -> anyhow::Result<End> {
        self.enter(REPLICATING, Instant::now());
        let replicated_polled = wait_replicated(&mut self.conn, &self.keys, drained.mark)
            .await?
            .duration_since(drained.healed);
        self.enter(AFTER, Instant::now());
        tokio::time::sleep(self.o.quiet).await;
        before.probing.cancel();
        let probed = before.probe.await??;
        self.phase_started.push(Instant::now());
        wait_settled(&mut self.conn, &self.keys).await?;
        before.sampling.cancel();
        let peaks = before.sampler.await??;
        let memory_final = redis_info(&mut self.conn, &["memory", "stats", "persistence"]).await?;
        let (rss_final, rss_hwm) = (rss_mb(), proc_status_mb("VmHWM"));
        let slow = slow_calls(&mut self.conn, &self.keys).await?;
        let latency = latency_events(&mut self.conn).await?;
        let restarts = |actor: &str| self.tree.health.get(actor).map_or(0, |r| r.restarts);
        Ok(End {
            probe_eou: before.probe_eou,
            probe_start_tx: before.probe_start_tx,
            memory_before: before.memory_before,
            rss_before: before.rss_before,
            probed,
            peaks,
            memory_final,
            rss_final,
            rss_hwm,
            slow,
            latency,
            forwarder_restarts: restarts(FORWARDER),
            replica_restarts: restarts(REPLICA),
            replicated_polled,
        })
    }

    /// Checks the outcome (see the module's header), stops everything, prints the report
    /// and fails if anything was lost, duplicated or left behind.
    async fn check_and_report(
        self,
        during: During,
        drained: Drained,
        end: End,
    ) -> anyhow::Result<()> {
        let Run {
            t0,
            redis,
            pg,
            wan,
            tree,
            stop,
            server,
            keys,
            mut conn,
            phase_started,
            replica,
            ..
        } = self;
        let written = &during.written;
        let mut acked: Vec<Uuid> = written.txs.clone();
        acked.extend(&end.probed.txs);
        acked.push(end.probe_start_tx);
        let mut failures = Vec::new();
        let lifecycles = lifecycles(&mut conn, &keys, &acked, &written.txs, &mut failures).await?;
        check_primary(&pg, &acked, written, &end.probed, &mut failures).await?;
        check_redis(
            &mut conn,
            &keys,
            written,
            &end.probe_eou,
            &end.probed,
            &mut failures,
        )
        .await?;
        stop.cancel();
        server.await??;
        wan.stop().await;
        pg.stop().await?;
        redis.stop().await;
        let largest_batch = tree
            .forwarder_metrics
            .largest_batch_bytes
            .load(Ordering::Relaxed);
        report(
            &during,
            &drained,
            &end,
            &replica,
            &phase_started,
            &lifecycles,
            acked.len(),
            largest_batch,
        );
        println!(
            "(whole run {:.0} s; load average at the end {})",
            t0.elapsed().as_secs_f64(),
            load_average()
        );
        verdict(written, &end.probed, failures)
    }
}

/// Prints the run's measures and the probe writer's latency by phase.
#[allow(clippy::too_many_arguments)]
fn report(
    during: &During,
    drained: &Drained,
    end: &End,
    replica: &ReplicaTimes,
    phase_started: &[Instant],
    lifecycles: &Lifecycles,
    acked: usize,
    largest_batch: u64,
) {
    let During {
        written,
        written_in,
        memory_at_heal,
        ..
    } = during;
    let (written_in, memory_at_heal) = (*written_in, *memory_at_heal);
    let healed_ms = drained.healed_ms;
    let (drained_polled, drain_batches, drain_trips) =
        (drained.polled, drained.batches, drained.round_trips);
    let End {
        memory_before,
        rss_before,
        probed,
        peaks,
        memory_final,
        rss_final,
        rss_hwm,
        slow,
        latency,
        forwarder_restarts,
        replica_restarts,
        replicated_polled,
        ..
    } = end;
    let (memory_before, replicated_polled) = (*memory_before, *replicated_polled);
    let (replica_stopped, replica_started, start_took) =
        (replica.stopped, replica.started, replica.start_took);
    let secs = |d: Duration| d.as_secs_f64();
    let after_heal = |ms: u64| ms.saturating_sub(healed_ms) as f64 / 1000.0;
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let used_final = memory_final.get("used_memory").copied().unwrap_or(0);
    let redis_peak = memory_final
        .get("used_memory_peak")
        .copied()
        .unwrap_or(0)
        .max(peaks.used_memory);
    let replica_down = match (replica_stopped, replica_started) {
        (Some(a), Some(b)) => format!(
            "stopped {:.1} s, started {:.1} s after the cut (the heal: {:.1} s); accepted connections {:.1} s after its start",
            secs(a),
            secs(b),
            secs(written_in),
            secs(start_took)
        ),
        _ => "not stopped".to_owned(),
    };
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| written during the cut | {} transactions in {:.1} s ({:.0}/s): {} executed obs units started, {} finished, {} single files, {} bulk registrations ({} files) |",
        written.txs.len(),
        secs(written_in),
        written.txs.len() as f64 / secs(written_in),
        written.starts.len(),
        written.finishes,
        written.singles,
        written.bulks,
        written.bulk_files
    );
    println!(
        "| load writes' latency (during) | single p50 {:.3} ms, p99 {:.3} ms; bulk p50 {:.1} ms, p99 {:.1} ms |",
        ms(&written.single_us, 0.5),
        ms(&written.single_us, 0.99),
        ms(&written.bulk_us, 0.5),
        ms(&written.bulk_us, 0.99)
    );
    println!("| replica down | {replica_down} |");
    println!(
        "| drained (every transaction buffered before the heal forwarded) after the heal | {:.1} s (polled: {:.1} s) |",
        after_heal(lifecycles.last_forwarded_ms),
        secs(drained_polled)
    );
    println!(
        "| first / all of them `replicated` after the heal | {:.1} s / {:.1} s (polled: {:.1} s) |",
        after_heal(lifecycles.first_replicated_ms),
        after_heal(lifecycles.last_replicated_ms),
        secs(replicated_polled)
    );
    println!(
        "| Redis used_memory: before the cut / at the heal / peak / final | {:.1} / {:.1} / {:.1} / {:.1} MB |",
        mb(memory_before),
        mb(memory_at_heal),
        mb(redis_peak),
        mb(used_final)
    );
    let records = written.starts.len() + written.files.len();
    println!(
        "| Redis used_memory added by the backlog (at the heal) | {:.0} bytes per transaction, {:.0} per overlay record ({} records) |",
        memory_at_heal.saturating_sub(memory_before) as f64 / written.txs.len().max(1) as f64,
        memory_at_heal.saturating_sub(memory_before) as f64 / records.max(1) as f64,
        records
    );
    println!(
        "| Redis used_memory kept after replication (lifecycles, for `replica.retention`) | {:.0} bytes per transaction |",
        used_final.saturating_sub(memory_before) as f64 / acked.max(1) as f64
    );
    println!(
        "| Redis RSS: peak / final | {:.1} / {:.1} MB |",
        mb(peaks.used_memory_rss),
        mb(memory_final.get("used_memory_rss").copied().unwrap_or(0))
    );
    println!(
        "| service RSS (this process: service and load generators): before / peak sampled / final; VmHWM | {:.0} / {:.0} / {:.0} MB; {:.0} MB |",
        rss_before, peaks.rss_mb, rss_final, rss_hwm
    );
    println!(
        "| forwarder, heal to drained | {drain_batches} batches, {drain_trips} round trips; largest batch {:.1} MB |",
        largest_batch as f64 / 1_048_576.0
    );
    println!(
        "| Redis forks (AOF rewrites) in the run; AOF at the end | {}; {:.0} MB |",
        memory_final.get("total_forks").copied().unwrap_or(0),
        mb(memory_final.get("aof_current_size").copied().unwrap_or(0))
    );
    println!("| Redis calls over 1 ms (slow log) | {slow} |");
    println!("| Redis latency events over 10 ms (latency monitor) | {latency} |");
    println!(
        "| restarts: forwarder / replica tracker | {forwarder_restarts} / {replica_restarts} |"
    );
    println!(
        "| 503 answers, each sent again with its Idempotency-Key: load / probe | {} / {} |",
        written.unavailable,
        probed.unavailable.iter().sum::<u64>()
    );
    println!(
        "| verified | {} acknowledged transactions (with the probe's); not acknowledged in the end: {} |",
        acked,
        written.errors.len()
    );
    println!();
    println!("Ingest latency of the probe writer (one file registration every 10 ms):");
    println!(
        "| phase | s | writes | 503s | other failures | p50 ms | p99 ms | max ms | p99 / before | p99 / after |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (before_p99, after_p99) = (
        ms(&probed.latency[BEFORE], 0.99),
        ms(&probed.latency[AFTER], 0.99),
    );
    for (i, name) in PHASES.iter().enumerate() {
        let h = &probed.latency[i];
        let span = phase_started[i + 1].duration_since(phase_started[i]);
        if h.is_empty() {
            println!(
                "| {name} | {:.1} | 0 | {} | {} | - | - | - | - | - |",
                secs(span),
                probed.unavailable[i],
                probed.errors[i]
            );
            continue;
        }
        println!(
            "| {name} | {:.1} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            secs(span),
            h.len(),
            probed.unavailable[i],
            probed.errors[i],
            ms(h, 0.5),
            ms(h, 0.99),
            h.max() as f64 / 1000.0,
            ms(h, 0.99) / before_p99,
            ms(h, 0.99) / after_p99
        );
    }
    let mut slowest = probed.slowest.clone();
    slowest.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
    slowest.truncate(SLOWEST);
    println!(
        "(slowest probe writes, ms at s after the probe started: {})",
        slowest
            .iter()
            .map(|(us, phase, at)| format!(
                "{:.0} at {:.1} ({})",
                *us as f64 / 1000.0,
                secs(*at),
                PHASES[*phase]
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
}

/// Fails with every problem found, or says what was verified.
fn verdict(written: &Written, probed: &Probed, mut failures: Vec<String>) -> anyhow::Result<()> {
    for e in written.errors.iter().take(10) {
        failures.push(format!("a load write was not acknowledged: {e}"));
    }
    if probed.errors.iter().any(|e| *e > 0) {
        failures.push(format!(
            "probe writes that failed otherwise than with a 503, by phase: {:?}",
            probed.errors
        ));
    }
    if !failures.is_empty() {
        bail!(
            "the outage lost, duplicated or left behind:\n  {}",
            failures.join("\n  ")
        );
    }
    println!("verified: every acknowledged transaction applied once on the primary, all replicated, stream, forwarded set, dead letters and overlay empty");
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn used_memory(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    redis_info(conn, &["memory"])
        .await?
        .get("used_memory")
        .copied()
        .context("INFO memory has no used_memory")
}

/// The load: `transactions` writes from `clients` writers sharing one counter. Each writer
/// starts an executed obs unit, registers `FILES_PER_UNIT` files in it one by one, finishes
/// it and starts the next; `bulk` of the slots, spread evenly, are bulk registrations of
/// `bulk_files` files instead (in the writer's current unit).
#[derive(Clone)]
struct Load {
    http: reqwest::Client,
    base: Arc<str>,
    secret: Arc<str>,
    next: Arc<AtomicUsize>,
    /// When slot `i` is due (with a rate): `i / rate` after this.
    paced_from: Instant,
    rate: f64,
    transactions: usize,
    bulk: usize,
    bulk_files: usize,
}

/// What the writers got acknowledged.
struct Written {
    txs: Vec<Uuid>,
    /// Executed obs units started (their ids).
    starts: Vec<Uuid>,
    finishes: usize,
    singles: usize,
    bulks: usize,
    bulk_files: usize,
    /// Every file registered (single and bulk).
    files: Vec<Uuid>,
    /// 503 answers, each retried with the same Idempotency-Key.
    unavailable: usize,
    errors: Vec<String>,
    single_us: Histogram<u64>,
    bulk_us: Histogram<u64>,
}

impl Written {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            txs: Vec::new(),
            starts: Vec::new(),
            finishes: 0,
            singles: 0,
            bulks: 0,
            bulk_files: 0,
            files: Vec::new(),
            unavailable: 0,
            errors: Vec::new(),
            single_us: histogram()?,
            bulk_us: histogram()?,
        })
    }

    fn add(&mut self, other: Written) -> anyhow::Result<()> {
        self.txs.extend(other.txs);
        self.starts.extend(other.starts);
        self.finishes += other.finishes;
        self.singles += other.singles;
        self.bulks += other.bulks;
        self.bulk_files += other.bulk_files;
        self.files.extend(other.files);
        self.unavailable += other.unavailable;
        self.errors.extend(other.errors);
        self.single_us.add(&other.single_us)?;
        self.bulk_us.add(&other.bulk_us)?;
        Ok(())
    }
}

/// Microseconds, 1 µs to 10 minutes, 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// What one write is.
enum Op {
    Start,
    File,
    Bulk,
    Finish,
}

impl Load {
    fn new(o: &Options, base: &str, secret: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(o.clients)
                .build()?,
            base: base.into(),
            secret: secret.into(),
            next: Arc::default(),
            paced_from: Instant::now(),
            rate: o.rate,
            transactions: o.transactions,
            bulk: o.bulk,
            bulk_files: o.bulk_files,
        })
    }

    /// Whether slot `i` is a bulk registration: the middle slot of each of `bulk` equal
    /// stretches.
    fn is_bulk(&self, i: usize) -> bool {
        if self.bulk == 0 {
            return false;
        }
        let stretch = self.transactions / self.bulk;
        i % stretch == stretch / 2 && i / stretch < self.bulk
    }

    async fn writer(self, w: usize, progress: Arc<Progress>) -> anyhow::Result<Written> {
        let mut out = Written::new()?;
        let mut unit: Option<(Uuid, usize)> = None;
        // A bulk slot taken while no unit was open is written next.
        let mut owed = 0;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.transactions {
                return Ok(out);
            }
            if self.rate > 0.0 {
                let due = self.paced_from + Duration::from_secs_f64(i as f64 / self.rate);
                tokio::time::sleep_until(due.into()).await;
            }
            owed += usize::from(self.is_bulk(i));
            let op = match unit {
                None => Op::Start,
                Some(_) if owed > 0 => {
                    owed -= 1;
                    Op::Bulk
                }
                Some((_, files)) if files >= FILES_PER_UNIT => Op::Finish,
                Some(_) => Op::File,
            };
            let t = Instant::now();
            let (method, path, body, want) = match (&op, unit) {
                (Op::Start, _) => (
                    reqwest::Method::POST,
                    "/executed_obs_units/start".to_owned(),
                    json!({"obs_unit_id": i % OBS_UNITS + 1, "instrument_module": "prime-cam"}),
                    StatusCode::CREATED,
                ),
                (Op::File, Some((eou, _))) => (
                    reqwest::Method::POST,
                    "/raw_data_files/".to_owned(),
                    file_body(&eou.to_string(), &format!("w{w}_{i}.fits")),
                    StatusCode::CREATED,
                ),
                (Op::Bulk, Some((eou, _))) => (
                    reqwest::Method::POST,
                    "/raw_data_files/bulk".to_owned(),
                    Value::Array(
                        (0..self.bulk_files)
                            .map(|k| file_body(&eou.to_string(), &format!("b{i}_{k}.fits")))
                            .collect(),
                    ),
                    StatusCode::CREATED,
                ),
                (Op::Finish, Some((eou, _))) => (
                    reqwest::Method::PUT,
                    format!("/executed_obs_units/{eou}/finish"),
                    json!({"status": "completed"}),
                    StatusCode::OK,
                ),
                _ => unreachable!("files, bulks and finishes only go to an open unit"),
            };
            // As a careful client does: an Idempotency-Key, and a 503 retried with it (the
            // write may have been stored though its answer was lost).
            let key = format!("load-{i}");
            let mut tries = 0;
            let (status, text) = loop {
                let r = self
                    .http
                    .request(method.clone(), format!("{}{path}", self.base))
                    .bearer_auth(&*self.secret)
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status();
                let retry_after = retry_after(&r);
                let text = r.text().await?;
                if status != StatusCode::SERVICE_UNAVAILABLE || tries == MAX_RETRIES {
                    break (status, text);
                }
                tries += 1;
                out.unavailable += 1;
                tokio::time::sleep(retry_after).await;
            };
            if status != want {
                out.errors.push(format!(
                    "{path}: {status} {}",
                    text.chars().take(200).collect::<String>()
                ));
                continue;
            }
            let took = t.elapsed().as_micros() as u64;
            let answer: Value = serde_json::from_str(&text)?;
            out.txs.push(parse_uuid(&answer["transaction_id"])?);
            progress.written.fetch_add(1, Ordering::Relaxed);
            match op {
                Op::Start => {
                    let eou = parse_uuid(&answer["id"])?;
                    out.starts.push(eou);
                    unit = Some((eou, 0));
                }
                Op::File => {
                    out.singles += 1;
                    out.files.push(parse_uuid(&answer["id"])?);
                    out.single_us.saturating_record(took);
                    unit = unit.map(|(eou, files)| (eou, files + 1));
                }
                Op::Bulk => {
                    let ids = answer["ids"].as_array().context("bulk answered no ids")?;
                    anyhow::ensure!(
                        ids.len() == self.bulk_files,
                        "bulk answered {} ids",
                        ids.len()
                    );
                    for id in ids {
                        out.files.push(parse_uuid(id)?);
                    }
                    out.bulks += 1;
                    out.bulk_files += ids.len();
                    out.bulk_us.saturating_record(took);
                }
                Op::Finish => {
                    out.finishes += 1;
                    unit = None;
                }
            }
        }
    }
}

/// A 503's `Retry-After` (seconds), or 1 s.
fn retry_after(r: &reqwest::Response) -> Duration {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

fn parse_uuid(v: &Value) -> anyhow::Result<Uuid> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not a UUID: {v}"))
}

/// How many of the probe's slowest writes are listed.
const SLOWEST: usize = 10;

/// What the probe writer measured, by phase.
struct Probed {
    latency: Vec<Histogram<u64>>,
    /// The slowest writes: latency (µs), phase, when (since the probe started).
    slowest: Vec<(u64, usize, Duration)>,
    /// 503 answers, by phase (each write sent again with the same Idempotency-Key).
    unavailable: Vec<u64>,
    /// Other failures (a connection error, another status), by phase; sent again too.
    errors: Vec<u64>,
    txs: Vec<Uuid>,
    files: Vec<Uuid>,
}

/// One file registration every `PROBE_INTERVAL` until `stop`; latencies by phase.
async fn probe(
    url: String,
    secret: String,
    eou: String,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> anyhow::Result<Probed> {
    let http = reqwest::Client::new();
    let mut out = Probed {
        latency: PHASES
            .iter()
            .map(|_| histogram())
            .collect::<anyhow::Result<_>>()?,
        slowest: Vec::new(),
        unavailable: vec![0; PHASES.len()],
        errors: vec![0; PHASES.len()],
        txs: Vec::new(),
        files: Vec::new(),
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Writes are numbered; a write that was not acknowledged is sent again, with the same
    // Idempotency-Key, at the next tick (after the stop too, until it is).
    let mut n = 0u64;
    let mut failed = false;
    loop {
        tokio::select! {
            () = stop.cancelled(), if !failed => break,
            _ = tick.tick() => {}
        }
        let phase = progress.phase.load(Ordering::Relaxed);
        let t = Instant::now();
        let sent = http
            .post(&url)
            .bearer_auth(&secret)
            .header("idempotency-key", format!("probe-{n}"))
            .json(&file_body(&eou, &format!("probe_{n}.fits")))
            .send()
            .await;
        let answer = match sent {
            Ok(r) if r.status() == StatusCode::CREATED => r.json::<Value>().await.ok(),
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                out.unavailable[phase] += 1;
                None
            }
            _ => {
                out.errors[phase] += 1;
                None
            }
        };
        let Some(answer) = answer else {
            failed = true;
            anyhow::ensure!(
                out.unavailable.iter().sum::<u64>() + out.errors.iter().sum::<u64>() < 10_000,
                "the probe's writes keep failing"
            );
            continue;
        };
        failed = false;
        n += 1;
        let took = t.elapsed().as_micros() as u64;
        out.latency[phase].saturating_record(took);
        out.slowest.push((took, phase, t.duration_since(started)));
        if out.slowest.len() > 2 * SLOWEST {
            out.slowest.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
            out.slowest.truncate(SLOWEST);
        }
        out.txs.push(parse_uuid(&answer["transaction_id"])?);
        out.files.push(parse_uuid(&answer["id"])?);
    }
    Ok(out)
}

/// The largest memory figures seen while sampling.
#[derive(Default)]
struct Peaks {
    used_memory: u64,
    used_memory_rss: u64,
    rss_mb: f64,
}

/// Samples Redis' memory and this process's RSS every 100 ms until `stop`; a progress
/// line on stderr every 5 s.
async fn sample(
    mut conn: MultiplexedConnection,
    keys: Keys,
    progress: Arc<Progress>,
    transactions: usize,
    stop: CancellationToken,
) -> anyhow::Result<Peaks> {
    let mut peaks = Peaks::default();
    let started = Instant::now();
    let mut last_line = started;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(peaks),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let memory = redis_info(&mut conn, &["memory"]).await?;
        let field = |k: &str| memory.get(k).copied().unwrap_or(0);
        peaks.used_memory = peaks.used_memory.max(field("used_memory"));
        peaks.used_memory_rss = peaks.used_memory_rss.max(field("used_memory_rss"));
        let rss = rss_mb();
        peaks.rss_mb = peaks.rss_mb.max(rss);
        if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            let (stream, forwarded): (u64, u64) = redis::pipe()
                .cmd("XLEN")
                .arg(keys.stream())
                .cmd("ZCARD")
                .arg(keys.forwarded())
                .query_async(&mut conn)
                .await?;
            eprintln!(
                "{:>6.1} s {:<11} written {}/{transactions}, stream {stream}, forwarded {forwarded}, Redis {:.0} MB, RSS {rss:.0} MB",
                started.elapsed().as_secs_f64(),
                PHASES[progress.phase.load(Ordering::Relaxed)],
                progress.written.load(Ordering::Relaxed),
                field("used_memory") as f64 / 1_048_576.0,
            );
        }
    }
}

/// Stream entries as XRANGE answers them: id, then fields.
type Entries = Vec<(String, HashMap<String, Vec<u8>>)>;

/// The transaction of the stream's newest entry.
async fn last_entry(conn: &mut MultiplexedConnection, keys: &Keys) -> anyhow::Result<Uuid> {
    let entries: Entries = redis::cmd("XREVRANGE")
        .arg(keys.stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let (_, fields) = entries.into_iter().next().context("the stream is empty")?;
    let stored = fields.get("tx").context("an entry without tx")?;
    let tx: Value = serde_json::from_slice(&ops_db_actors::body::unpack(stored)?)?;
    parse_uuid(&tx["id"])
}

/// What one look at Redis found: done, or not yet and what it saw (for the timeout's
/// message).
enum Look {
    Done,
    NotYet(String),
}

/// Looks (`look`) every `every` until it says done; fails with `what` and the last thing
/// seen if that takes `within`. The one poll loop of the phases below.
async fn poll<F>(
    conn: &mut MultiplexedConnection,
    what: &str,
    within: Duration,
    every: Duration,
    mut look: F,
) -> anyhow::Result<Instant>
where
    F: for<'c> FnMut(
        &'c mut MultiplexedConnection,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<Look>> + Send + 'c>,
    >,
{
    let since = Instant::now();
    loop {
        let seen = match look(conn).await? {
            Look::Done => return Ok(Instant::now()),
            Look::NotYet(seen) => seen,
        };
        anyhow::ensure!(
            since.elapsed() < within,
            "{what} within {within:?} ({seen})"
        );
        tokio::time::sleep(every).await;
    }
}

/// Polls until `last`, the stream's newest entry at the heal, has left the stream
/// (forwarded, or dead); when. The forwarder takes the stream in order and settles a batch
/// in order, so every entry before it has left too (the lifecycles confirm it afterwards).
async fn wait_drained(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    last: Uuid,
) -> anyhow::Result<Instant> {
    let lifecycle = keys.lifecycle(last);
    let what = "the backlog was not forwarded";
    poll(
        conn,
        what,
        PHASE_TIMEOUT,
        Duration::from_millis(50),
        |conn| {
            let lifecycle = lifecycle.clone();
            Box::pin(async move {
                let state: Option<TxState> = redis::cmd("HGET")
                    .arg(lifecycle)
                    .arg("state")
                    .query_async(conn)
                    .await?;
                Ok(match state {
                    Some(s) if s != TxState::Buffered => Look::Done,
                    _ => Look::NotYet(format!("state of the last: {state:?}")),
                })
            })
        },
    )
    .await
}

/// Polls until transaction `last` is `replicated` and nothing forwarded at or before its
/// commit LSN waits any more; when.
async fn wait_replicated(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    last: Uuid,
) -> anyhow::Result<Instant> {
    let (lifecycle, forwarded) = (keys.lifecycle(last), keys.forwarded());
    let what = "the backlog was not replicated";
    poll(
        conn,
        what,
        PHASE_TIMEOUT,
        Duration::from_millis(50),
        |conn| {
            let (lifecycle, forwarded) = (lifecycle.clone(), forwarded.clone());
            Box::pin(async move {
                let (state, lsn): (Option<TxState>, Option<String>) = redis::cmd("HMGET")
                    .arg(lifecycle)
                    .arg("state")
                    .arg("commit_lsn")
                    .query_async(conn)
                    .await?;
                if state != Some(TxState::Replicated) {
                    return Ok(Look::NotYet(format!("state of the last: {state:?}")));
                }
                let lsn: Lsn = lsn
                    .context("a replicated transaction without commit_lsn")?
                    .parse()
                    .map_err(|e| anyhow::anyhow!("commit_lsn: {e:?}"))?;
                let waiting: u64 = redis::cmd("ZCOUNT")
                    .arg(forwarded)
                    .arg("-inf")
                    .arg(lsn.score_ceil())
                    .query_async(conn)
                    .await?;
                Ok(if waiting == 0 {
                    Look::Done
                } else {
                    Look::NotYet(format!("{waiting} forwarded at or before it"))
                })
            })
        },
    )
    .await
}

/// With no more writes: polls until the stream and the forwarded set are empty.
async fn wait_settled(conn: &mut MultiplexedConnection, keys: &Keys) -> anyhow::Result<()> {
    let (stream, forwarded) = (keys.stream(), keys.forwarded());
    let what = "not settled after the last write";
    let within = Duration::from_secs(120);
    poll(conn, what, within, Duration::from_millis(20), |conn| {
        let (stream, forwarded) = (stream.clone(), forwarded.clone());
        Box::pin(async move {
            let (in_stream, in_forwarded): (u64, u64) = redis::pipe()
                .cmd("XLEN")
                .arg(stream)
                .cmd("ZCARD")
                .arg(forwarded)
                .query_async(conn)
                .await?;
            Ok(if in_stream == 0 && in_forwarded == 0 {
                Look::Done
            } else {
                Look::NotYet(format!(
                    "{in_stream} in the stream, {in_forwarded} forwarded"
                ))
            })
        })
    })
    .await?;
    Ok(())
}

/// From the lifecycles of the load's transactions: when the last was forwarded and when
/// the first and the last were replicated (unix ms, the service's own timestamps).
struct Lifecycles {
    last_forwarded_ms: u64,
    first_replicated_ms: u64,
    last_replicated_ms: u64,
}

/// Reads every acknowledged transaction's lifecycle; a failure for each not `replicated`.
async fn lifecycles(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    acked: &[Uuid],
    load: &[Uuid],
    failures: &mut Vec<String>,
) -> anyhow::Result<Lifecycles> {
    let load: HashSet<&Uuid> = load.iter().collect();
    let mut out = Lifecycles {
        last_forwarded_ms: 0,
        first_replicated_ms: u64::MAX,
        last_replicated_ms: 0,
    };
    let mut not_replicated: HashMap<String, usize> = HashMap::new();
    for chunk in acked.chunks(2000) {
        let mut pipe = redis::pipe();
        for tx in chunk {
            pipe.cmd("HMGET")
                .arg(keys.lifecycle(*tx))
                .arg("state")
                .arg("forwarded_at")
                .arg("replicated_at");
        }
        let rows: Vec<(Option<String>, Option<u64>, Option<u64>)> = pipe.query_async(conn).await?;
        for (tx, (state, forwarded, replicated)) in chunk.iter().zip(rows) {
            if state.as_deref() != Some("replicated") {
                *not_replicated
                    .entry(state.unwrap_or_else(|| "missing".to_owned()))
                    .or_default() += 1;
                continue;
            }
            if load.contains(tx) {
                out.last_forwarded_ms = out.last_forwarded_ms.max(forwarded.unwrap_or(0));
                let replicated = replicated.unwrap_or(0);
                out.first_replicated_ms = out.first_replicated_ms.min(replicated);
                out.last_replicated_ms = out.last_replicated_ms.max(replicated);
            }
        }
    }
    for (state, n) in not_replicated {
        failures.push(format!(
            "{n} acknowledged transactions are {state}, not replicated"
        ));
    }
    Ok(out)
}

/// The primary's ledger holds exactly the acknowledged transactions, and its tables the
/// rows they wrote; the replica's ledger the same.
async fn check_primary(
    pg: &crate::local_pg::LocalPostgres,
    acked: &[Uuid],
    written: &Written,
    probed: &Probed,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut primary = PgConnection::connect(&pg.primary_url()).await?;
    let ledger = crate::set_check::exactly_once(&mut primary, acked).await?;
    // Each acknowledged transaction is acknowledged once here: a 503 is sent again with
    // its Idempotency-Key and counted once.
    if !ledger.holds() || ledger.acked != ledger.acked_distinct {
        failures.push(ledger.to_string());
    }
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let files = count("SELECT count(*) FROM raw_data_file")
        .fetch_one(&mut primary)
        .await?;
    let want_files = written.files.len() + probed.files.len();
    if files != want_files as i64 {
        failures.push(format!("primary: {files} files, {want_files} acknowledged"));
    }
    let units = count("SELECT count(*) FROM executed_obs_unit")
        .fetch_one(&mut primary)
        .await?;
    let want_units = written.starts.len() + 1;
    if units != want_units as i64 {
        failures.push(format!(
            "primary: {units} executed obs units, {want_units} acknowledged"
        ));
    }
    let finished = count("SELECT count(*) FROM executed_obs_unit WHERE status = 'completed'")
        .fetch_one(&mut primary)
        .await?;
    if finished != written.finishes as i64 {
        failures.push(format!(
            "primary: {finished} executed obs units completed, {} finishes acknowledged",
            written.finishes
        ));
    }
    let mut replica = PgConnection::connect(&pg.replica_url()).await?;
    let on_replica = count("SELECT count(*) FROM opsdb_api.applied_transaction")
        .fetch_one(&mut replica)
        .await?;
    if on_replica != ledger.rows as i64 {
        failures.push(format!(
            "replica: {on_replica} ledger rows, primary {}",
            ledger.rows
        ));
    }
    Ok(())
}

/// Nothing of the run is left in Redis but lifecycles: the stream, the forwarded set and
/// the dead letters are empty, and no overlay record or index entry of the run exists.
async fn check_redis(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    written: &Written,
    probe_eou: &Uuid,
    probed: &Probed,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (stream, forwarded, dead): (u64, u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(keys.stream())
        .cmd("ZCARD")
        .arg(keys.forwarded())
        .cmd("XLEN")
        .arg(keys.dead_letters())
        .query_async(conn)
        .await?;
    if stream + forwarded + dead > 0 {
        failures.push(format!(
            "Redis: {stream} in the stream, {forwarded} forwarded, {dead} dead letters"
        ));
    }
    let units = written.starts.iter().chain([probe_eou]);
    let mut records: Vec<String> = units
        .clone()
        .map(|id| keys.record(Table::ExecutedObsUnit, *id))
        .collect();
    records.extend(
        written
            .files
            .iter()
            .chain(&probed.files)
            .map(|id| keys.record(Table::RawDataFile, *id)),
    );
    let mut indexes: Vec<String> = units
        .map(|id| keys.index(Table::RawDataFile, "executed_obs_unit_id", &id.to_string()))
        .collect();
    indexes.extend(
        (1..=OBS_UNITS).map(|n| keys.index(Table::ExecutedObsUnit, "obs_unit_id", &n.to_string())),
    );
    let mut left = 0usize;
    for chunk in records.chunks(5000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.exists(key);
        }
        let exists: Vec<bool> = pipe.query_async(conn).await?;
        left += exists.iter().filter(|e| **e).count();
    }
    if left > 0 {
        failures.push(format!(
            "overlay: {left} of {} records not released",
            records.len()
        ));
    }
    let mut entries = 0u64;
    for chunk in indexes.chunks(5000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.zcard(key);
        }
        let sizes: Vec<u64> = pipe.query_async(conn).await?;
        entries += sizes.iter().sum::<u64>();
    }
    if entries > 0 {
        failures.push(format!(
            "overlay: {entries} index entries left in {} index sets",
            indexes.len()
        ));
    }
    Ok(())
}

/// Slow-log entries kept: more than an outage's calls over 1 ms.
const SLOW_LOG_LEN: usize = 100_000;

/// Redis' slow log from now on: every command slower than 1 ms; and its latency monitor:
/// events (an fsync of the AOF, a fork, ...) slower than 10 ms.
async fn watch_slow_calls(conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
    let () = redis::pipe()
        .cmd("CONFIG")
        .arg("SET")
        .arg("latency-monitor-threshold")
        .arg(10)
        .ignore()
        .cmd("LATENCY")
        .arg("RESET")
        .ignore()
        .query_async(&mut *conn)
        .await?;
    slow_log::watch(conn, SLOW_LOG_LEN).await?;
    Ok(())
}

/// Redis' latency monitor: each event over 10 ms with its longest, in ms.
async fn latency_events(conn: &mut MultiplexedConnection) -> anyhow::Result<String> {
    // Each: event name, time of the latest, latest ms, longest ms.
    let events: Vec<(String, u64, u64, u64)> = redis::cmd("LATENCY")
        .arg("LATEST")
        .query_async(conn)
        .await?;
    if events.is_empty() {
        return Ok("none".to_owned());
    }
    Ok(events
        .iter()
        .map(|(name, _, _, longest)| format!("{name}: longest {longest} ms"))
        .collect::<Vec<_>>()
        .join("; "))
}

/// The slow log by script (told apart by their first keys; `buffer.lua` also by the
/// operation, its ARGV[4]) and by command: calls over 1 ms, over 5 and 10 ms, and the
/// longest.
async fn slow_calls(conn: &mut MultiplexedConnection, keys: &Keys) -> anyhow::Result<String> {
    let mut by: HashMap<String, (usize, usize, usize, u64)> = HashMap::new();
    for SlowCall { micros, args } in slow_log::calls(conn, SLOW_LOG_LEN).await? {
        let name = match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
            Some("EVALSHA" | "EVAL") => {
                let numkeys: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
                let argv = |i: usize| args.get(2 + numkeys + i).map_or("?", String::as_str);
                match (args.get(3), args.get(4)) {
                    (Some(k), _) if *k == keys.forwarded() => "replicated.lua".to_owned(),
                    (Some(k), Some(k2)) if *k == keys.stream() && *k2 == keys.dead_letters() => {
                        "settle.lua".to_owned()
                    }
                    (Some(k), _) if *k == keys.stream() => format!("buffer.lua {}", argv(4)),
                    (Some(k), Some(k2)) if *k == keys.staging() && k2.contains(":stg:") => {
                        match numkeys {
                            2 => "abort.lua".to_owned(),
                            _ if args.get(5).is_some_and(|k3| *k3 == keys.stream())
                                && args.get(6).is_some_and(|k4| k4.contains(":tx:")) =>
                            {
                                "commit.lua".to_owned()
                            }
                            _ => "stage.lua".to_owned(),
                        }
                    }
                    (Some(k), _) if *k == keys.staging() => "overlay_read.lua".to_owned(),
                    _ => "another script".to_owned(),
                }
            }
            Some(command) => command.to_owned(),
            None => "other commands".to_owned(),
        };
        let slot = by.entry(name).or_default();
        slot.0 += 1;
        slot.1 += usize::from(micros > 5_000);
        slot.2 += usize::from(micros > 10_000);
        slot.3 = slot.3.max(micros);
    }
    if by.is_empty() {
        return Ok("none".to_owned());
    }
    let mut by: Vec<_> = by.into_iter().collect();
    by.sort_by_key(|(_, (_, _, _, longest))| std::cmp::Reverse(*longest));
    Ok(by
        .iter()
        .map(|(name, (n, over_5, over_10, longest))| {
            format!(
                "{name}: {n} ({over_5} over 5 ms, {over_10} over 10), longest {:.1} ms",
                *longest as f64 / 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}
