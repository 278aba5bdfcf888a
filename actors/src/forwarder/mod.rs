//! ForwarderActor: drains the buffer to the primary, in batches, in stream order.
//!
//! Guarantees:
//! - **exactly-once effect**: every transaction is applied in the same database transaction
//!   as its ledger row; a replay (crash after the commit, before Redis heard of it) finds the
//!   ledger row and is skipped;
//! - **nothing lost**: entries are read through a consumer group and leave the stream only
//!   after the commit, in the same atomic Redis step that records their outcome, so a crash
//!   at any point leaves them pending, and they are read again (pending first) after the
//!   restart;
//! - **order**: one batch at a time on one connection, its transactions applied in stream
//!   order, and batches settled in Redis in the order they committed. While a batch is on
//!   its way, the one before it is settled and the next one read (it goes as soon as the
//!   answer is in): over the WAN the round trip hides the Redis work;
//! - **let it crash**: any trouble with the primary or Redis (refused, reset, timeout,
//!   stall) fails the actor; the supervisor restarts it with capped full-jitter backoff,
//!   forever. Nothing here is on the ingest path.

mod apply;
#[cfg(feature = "fault-injection")]
mod crash;
mod error;
mod heartbeat;
mod isolate;
pub mod lease;
mod reach;
mod read;
mod settle;
mod split;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection};

pub use apply::{is_permanent, Outcome, PERMANENT_SQLSTATES};
#[cfg(feature = "fault-injection")]
pub use crash::{CrashPoint, CrashPoints};
pub use error::ForwardError;
pub use isolate::Isolation;
use isolate::Stall;
pub use reach::probe;
use read::{Batch, Reader};

use crate::events::EventSink;

use crate::overlay::Keys;
use crate::pg::PgTarget;
use crate::redis_conn;

/// The consumer group (and its one consumer) through which the forwarder reads.
pub const GROUP: &str = "forwarder";

#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub primary: PgTarget,
    pub redis_url: String,
    pub keys: Keys,
    /// The service's own schema on the primary (`schema.name`, a validated identifier):
    /// where the batch function and the ledger are.
    pub schema: String,
    /// Most transactions in one batch.
    pub batch_size: usize,
    /// Most bytes of transaction JSON in one batch; a larger transaction goes alone.
    pub batch_max_bytes: usize,
    /// How long a short batch waits for more transactions before it goes.
    pub linger: Duration,
    pub connect_timeout: Duration,
    /// Bound on one batch's round trip; a stalled link fails the actor after it.
    pub statement_timeout: Duration,
    pub redis_timeout: Duration,
    /// How many times one transaction may fail alone with the same kind of error (one
    /// that is not about the environment) before it is dead-lettered (see `isolate`).
    pub max_attempts: u32,
    /// How long the forwarder lease lasts without renewal (see `lease`).
    pub lease_ttl: Duration,
    /// What of the forwarded bodies is kept for a resend (`crate::resend`).
    pub window: crate::resend::WindowConfig,
    /// This site's name: its heartbeat row.
    pub site: String,
    /// How long without a commit before a heartbeat (see `heartbeat`); zero: none.
    pub heartbeat_interval: Duration,
}

/// Counters for `/metrics` (see [`ForwarderMetrics::register`]); `/health` reads them too.
#[derive(Debug, Default)]
pub struct ForwarderMetrics {
    pub batches: Counter,
    pub applied: Counter,
    pub skipped: Counter,
    pub dead: Counter,
    /// SQL messages sent to the primary (one per batch by construction).
    pub round_trips: Counter,
    /// The largest batch held so far, in bytes of transaction JSON (`/health`).
    pub largest_batch_bytes: AtomicU64,
    /// The last commit LSN read. Not exported: a WAL position is shown in `/health`, not
    /// graphed.
    pub last_lsn: AtomicU64,
    /// Who forwards for this site (`/health`).
    pub lease: lease::LeaseStatus,
    /// The link to the primary as last seen: 0 unknown, else a [`Link`].
    pub link: AtomicU8,
    /// Most transactions per batch while batches are split after a stall (`/health`;
    /// 0: not split).
    pub batch_limit: AtomicU64,
}

/// The link to the primary as the last batch saw it (`/health`'s `forwarder.link`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ForwarderLink))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Link {
    Up = 1,
    /// No connection, or it broke.
    Down = 2,
    /// The primary did not finish a batch within `forwarder.statement_timeout`: a batch
    /// too slow (then split) or a stalled link.
    Timeout = 3,
    /// No batch has said yet (also what a client reads for a word this build does not
    /// know).
    #[serde(other)]
    Unknown = 0,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Up => "up",
            Link::Down => "down",
            Link::Timeout => "timeout",
            Link::Unknown => "unknown",
        }
    }

    /// What a failed batch or connect says about the link, if anything.
    fn of(e: &ForwardError) -> Option<Link> {
        match isolate::stall(e) {
            Some(Stall::ServerTimeout | Stall::ClientTimeout) => Some(Link::Timeout),
            Some(Stall::Dropped) => Some(Link::Down),
            None => e.is_link().then_some(Link::Down),
        }
    }
}

impl ForwarderMetrics {
    /// The link as the last batch saw it.
    pub fn link(&self) -> Link {
        match self.link.load(Ordering::Relaxed) {
            1 => Link::Up,
            2 => Link::Down,
            3 => Link::Timeout,
            _ => Link::Unknown,
        }
    }
}

/// Records the link's state; a change is a `link.up`, `link.down` or `link.timeout` event.
fn set_link(args: &ForwarderArgs, link: Link, reason: Option<String>) {
    let new = link as u8;
    if args.metrics.link.swap(new, Ordering::Relaxed) != new {
        let kind = format!("link.{}", link.name());
        args.events
            .emit(&kind, serde_json::json!({ "reason": reason }));
    }
}

impl ForwarderMetrics {
    /// Registers the counters (the encoder appends `_total` to their names).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "opsdb_forwarder_batches",
                "Batches committed on the primary",
                &self.batches,
            ),
            (
                "opsdb_forwarder_applied",
                "Transactions applied on the primary",
                &self.applied,
            ),
            (
                "opsdb_forwarder_skipped",
                "Transactions found already applied (replays after a crash)",
                &self.skipped,
            ),
            (
                "opsdb_forwarder_dead",
                "Transactions the primary rejected for good (dead-lettered)",
                &self.dead,
            ),
            (
                "opsdb_forwarder_round_trips",
                "SQL messages sent to the primary",
                &self.round_trips,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }
}

#[derive(Clone)]
pub struct ForwarderActor;

#[derive(Clone)]
pub struct ForwarderArgs {
    pub config: Arc<ForwarderConfig>,
    pub metrics: Arc<ForwarderMetrics>,
    /// Failures counted per transaction, kept across restarts.
    pub isolation: Arc<Isolation>,
    /// `tx.forwarded`, `tx.dead`, `link.up`, `link.down`, `link.timeout`, `history.changed`.
    pub events: Arc<EventSink>,
    /// The primary's identity, recorded at each connect (`/health`'s `history`).
    pub history: Arc<crate::history::History>,
    /// Told after each settled batch: the replica tracker polls fast from then on.
    pub forwarded: Arc<tokio::sync::Notify>,
    /// Armed by fault tests; exists only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub crash: Arc<CrashPoints>,
}

pub struct ForwarderState {
    args: ForwarderArgs,
    pg: Option<PgConnection>,
    reader: Option<Reader>,
    settle: Option<MultiplexedConnection>,
    heartbeat: heartbeat::Heartbeat,
    /// The next batch, read while the one before it was applied: sent at once.
    ahead: Option<Batch>,
    /// Committed on the primary, not yet settled in Redis: settled while `ahead` is on its
    /// way. Only ever set together with `ahead`.
    unsettled: Option<Committed>,
}

pub enum ForwarderMsg {
    /// Forward the next batch (sent to itself after each one).
    Next,
}

impl Actor for ForwarderActor {
    type Msg = ForwarderMsg;
    type State = ForwarderState;
    type Arguments = ForwarderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ForwarderArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Connecting happens in the first `Next`: a primary that is down at boot must
        // crash-and-back-off like any later outage, not fail the start of the tree.
        myself.cast(ForwarderMsg::Next)?;
        lease::ensure_renewal(&args.config, &args.metrics);
        Ok(ForwarderState {
            heartbeat: heartbeat::Heartbeat::new(args.config.heartbeat_interval),
            args,
            pg: None,
            reader: None,
            settle: None,
            ahead: None,
            unsettled: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ForwarderMsg::Next => {
                // Any error fails the actor, on purpose: see `ForwardError`.
                if let Err(e) = forward_one_batch(state).await {
                    if let Some(link) = Link::of(&e) {
                        set_link(&state.args, link, Some(e.to_string()));
                    }
                    return Err(e.into());
                }
                myself.cast(ForwarderMsg::Next)?;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop: the standby need not wait out the lease.
        lease::release(&state.args.config, &state.args.metrics.lease).await;
        Ok(())
    }
}

/// How long a forwarder without the lease waits before it looks again.
const STANDBY_POLL: Duration = Duration::from_millis(100);

/// Connects to the primary; also returns its identity.
async fn connect_primary(
    config: &ForwarderConfig,
) -> Result<(PgConnection, crate::history::Identity), ForwardError> {
    let options = config.primary.options()?;
    // A batch's SQL carries the whole batch (megabytes); a slow one over the WAN is normal
    // and must not be logged as a warning with its text.
    // The same bound on the primary's side: an attempt this side gave up on is cancelled
    // there too, rather than left running (and racing its retry for the ledger rows).
    // Lock waits end at half of it (55P03, about the environment: waited out, never
    // blamed), so a statement timeout is the batch's own slowness (see `isolate`).
    let timeout_ms = config.statement_timeout.as_millis().max(2);
    let options = options
        .options([
            ("statement_timeout", timeout_ms),
            ("lock_timeout", timeout_ms / 2),
        ])
        .application_name("ops-db-api forwarder")
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Debug, config.statement_timeout);
    let connect = options.connect();
    let mut conn = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| ForwardError::ConnectTimeout(config.connect_timeout))??;
    // At each connect, in one round trip: a primary that failed over or was replaced is
    // seen before the first batch goes to it, and the batch is sent as a string literal,
    // whose quoting relies on standard_conforming_strings.
    let (identity, standard_strings) = crate::history::read_server(&mut conn).await?;
    if !standard_strings {
        conn.close().await?;
        return Err(ForwardError::NonStandardStrings);
    }
    Ok((conn, identity))
}

async fn connect_redis(
    config: &ForwarderConfig,
    role: &str,
    response_timeout: Duration,
) -> Result<MultiplexedConnection, ForwardError> {
    let url = &config.redis_url;
    Ok(redis_conn::open_url(url, role, config.redis_timeout, response_timeout).await?)
}

async fn forward_one_batch(state: &mut ForwarderState) -> Result<(), ForwardError> {
    let ForwarderState {
        args,
        pg,
        reader,
        settle,
        heartbeat,
        ahead,
        unsettled,
    } = state;
    let config = Arc::clone(&args.config);
    let fresh = config.lease_ttl / 2;
    if !args.metrics.lease.held(fresh) {
        if unsettled.is_some() {
            // Committed, not settled: whoever holds the lease next re-reads these entries
            // (pending) and finds them in the ledger.
            return Err(ForwardError::LeaseLost(fresh));
        }
        // Standby (another instance forwards), or the lease not confirmed yet.
        tokio::time::sleep(STANDBY_POLL).await;
        return Ok(());
    }
    #[cfg(feature = "fault-injection")]
    let crash = Arc::clone(&args.crash);
    let (reader, settle) = match (reader, settle) {
        (Some(reader), Some(settle)) => (reader, settle),
        (reader, settle) => {
            // Its own connections: a blocking read must not hold up the settle step, and
            // nothing is shared with ingestion.
            let conn = connect_redis(
                &config,
                "forwarder-read",
                read::BLOCK + config.redis_timeout,
            )
            .await?;
            let new_reader = Reader::new(conn, &config).await?;
            let new_settle =
                connect_redis(&config, "forwarder-settle", config.redis_timeout).await?;
            (reader.insert(new_reader), settle.insert(new_settle))
        }
    };
    let pg = match pg {
        Some(pg) => pg,
        None => {
            let (conn, identity) = connect_primary(&config).await?;
            let side = crate::history::Side::Primary;
            args.history
                .record(settle, &config.keys, side, identity, &args.events)
                .await?;
            pg.insert(conn)
        }
    };
    let isolation = &args.isolation;
    let m = &args.metrics;
    let batch = match ahead.take() {
        Some(batch) => batch,
        None => {
            if let Some(done) = unsettled.take() {
                settled(args, settle, done).await?;
            }
            let mut batch = reader.next_batch(&config, isolation, true).await?;
            poisoned(args, &mut batch);
            batch
        }
    };
    let Batch {
        entries, message, ..
    } = batch;
    if entries.is_empty() {
        if heartbeat.beat_if_due(pg, &config).await? == heartbeat::Beat::Sent {
            set_link(args, Link::Up, None);
        }
        return Ok(());
    }
    #[cfg(feature = "fault-injection")]
    crash.check(CrashPoint::BeforeCommit)?;
    m.largest_batch_bytes
        .fetch_max(message.json_bytes() as u64, Ordering::Relaxed);
    m.round_trips.inc();
    let sql = message.finish();
    // The primary's own statement timeout comes first while the link works: this side
    // also waits for the batch to travel (megabytes over the WAN) and for the answer.
    let bound = config.statement_timeout + config.connect_timeout;
    // While the batch is on its way and the primary applies it, the one before it is
    // settled and the next one read: over the WAN the round trip hides both.
    let previous = unsettled.take();
    let (applied, next) = tokio::join!(apply::apply(pg, &sql, entries.len(), bound), async {
        if let Some(done) = previous {
            settled(args, settle, done).await?;
        }
        let mut next = reader.next_batch(&config, isolation, false).await?;
        poisoned(args, &mut next);
        Ok::<_, ForwardError>(next)
    });
    drop(sql);
    let applied = match applied {
        Ok(applied) => applied,
        Err(e) => {
            blame(isolation, &config, &entries, &e);
            stalled(isolation, &config, &entries, &e, m);
            return Err(e);
        }
    };
    set_link(args, Link::Up, None);
    heartbeat.committed();
    let next = next?;
    #[cfg(feature = "fault-injection")]
    crash.check(CrashPoint::AfterCommit)?;
    let done = Committed { entries, applied };
    if next.is_empty() {
        if !m.lease.held(fresh) {
            return Err(ForwardError::LeaseLost(fresh));
        }
        settled(args, settle, done).await?;
    } else {
        // Settled while the next batch is on its way (it goes at once).
        *ahead = Some(next);
        *unsettled = Some(done);
    }
    Ok(())
}

/// A batch committed on the primary and not yet settled in Redis.
struct Committed {
    entries: Vec<read::Entry>,
    applied: apply::Applied,
}

/// Settles a committed batch in Redis, then tells the tracker, the failure counts, the
/// metrics and the event stream.
async fn settled(
    args: &ForwarderArgs,
    settle: &mut MultiplexedConnection,
    done: Committed,
) -> Result<(), ForwardError> {
    let Committed { entries, applied } = done;
    let config = &args.config;
    settle::settle_batch(settle, config, &entries, &applied).await?;
    // A permit is kept if the tracker is not waiting: it is not missed between its check
    // and its sleep.
    args.forwarded.notify_one();
    #[cfg(feature = "fault-injection")]
    args.crash.check(CrashPoint::AfterAck)?;
    let isolation = &args.isolation;
    let m = &args.metrics;
    isolation.settled(entries.iter().map(|e| e.tx_id));
    if let Some(last) = entries.last() {
        isolation.committed(&last.stream_id);
        let limit = isolation.batch_limit().unwrap_or(0);
        m.batch_limit.store(limit as u64, Ordering::Relaxed);
    }
    record(m, &applied);
    announce(&args.events, &entries, &applied);
    Ok(())
}

/// Counts and announces the entries dead-lettered while `batch` was read (they were not
/// transactions).
fn poisoned(args: &ForwarderArgs, batch: &mut Batch) {
    let poisoned = std::mem::take(&mut batch.poisoned);
    args.metrics.dead.inc_by(poisoned.len() as u64);
    for (stream_id, reason) in poisoned {
        let body =
            serde_json::json!({ "transaction_id": null, "stream_id": stream_id, "reason": reason });
        args.events.emit("tx.dead", body);
    }
}

/// One `tx.forwarded` event for the batch, one `tx.dead` per dead transaction.
fn announce(events: &EventSink, entries: &[read::Entry], applied: &apply::Applied) {
    let mut forwarded = Vec::with_capacity(entries.len());
    for (entry, outcome) in entries.iter().zip(&applied.outcomes) {
        match outcome {
            Outcome::Applied | Outcome::Skipped => forwarded.push(entry.tx_id),
            Outcome::Dead { sqlstate, message } => events.emit(
                "tx.dead",
                serde_json::json!({
                    "transaction_id": entry.tx_id,
                    "sqlstate": sqlstate,
                    "reason": message,
                }),
            ),
        }
    }
    if !forwarded.is_empty() {
        events.emit(
            "tx.forwarded",
            serde_json::json!({
                "commit_lsn": applied.lsn.to_string(),
                "transactions": forwarded,
            }),
        );
    }
}

/// Counts a failed batch against the transaction the primary named, if the error is one
/// that can be that transaction's own (see `isolate`).
fn blame(
    isolation: &Isolation,
    config: &ForwarderConfig,
    entries: &[read::Entry],
    e: &ForwardError,
) {
    let Some((index, failure)) = isolate::culprit(e) else {
        return;
    };
    let Some(entry) = entries.get(index) else {
        return;
    };
    let sqlstate = failure.sqlstate.clone();
    let attempts = isolation.fail(entry.tx_id, failure);
    tracing::warn!(
        transaction_id = %entry.tx_id,
        %sqlstate,
        attempts,
        max_attempts = config.max_attempts,
        "the primary failed a batch on this transaction; at max_attempts it is dead-lettered"
    );
}

/// A batch that failed without a culprit is split on the next attempts; a lone
/// transaction the primary cancelled at its statement timeout is counted against it.
fn stalled(
    isolation: &Isolation,
    config: &ForwarderConfig,
    entries: &[read::Entry],
    e: &ForwardError,
    m: &ForwarderMetrics,
) {
    let (Some(stall), Some(last)) = (isolate::stall(e), entries.last()) else {
        return;
    };
    isolation.stalled(entries.len(), &last.stream_id);
    let limit = isolation.batch_limit().unwrap_or(0);
    m.batch_limit.store(limit as u64, Ordering::Relaxed);
    if let ([entry], Stall::ServerTimeout) = (entries, stall) {
        let attempts = isolation.fail(entry.tx_id, isolate::timed_out(config.statement_timeout));
        tracing::warn!(
            transaction_id = %entry.tx_id,
            attempts,
            max_attempts = config.max_attempts,
            "a transaction alone did not finish within the statement timeout; at max_attempts it is dead-lettered"
        );
    } else {
        tracing::warn!(
            ?stall,
            transactions = entries.len(),
            next_limit = limit,
            "a batch failed without a culprit; the next batches are split"
        );
    }
}

fn record(m: &ForwarderMetrics, applied: &apply::Applied) {
    m.batches.inc();
    m.last_lsn.fetch_max(applied.lsn.0, Ordering::Relaxed);
    for outcome in &applied.outcomes {
        let counter = match outcome {
            Outcome::Applied => &m.applied,
            Outcome::Skipped => &m.skipped,
            Outcome::Dead { sqlstate, message } => {
                tracing::warn!(%sqlstate, %message, "transaction rejected by the primary, dead-lettered");
                &m.dead
            }
        };
        counter.inc();
    }
}
