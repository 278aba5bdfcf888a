//! BufferActor: makes each transaction durable in Redis before it is acknowledged.
//!
//! Guarantees:
//! - a write is acknowledged only after Redis answered `ok` to the script that appended it
//!   to the stream, recorded its lifecycle and wrote its overlay, all in one atomic step;
//!   with `appendfsync always` that answer comes after the fsync;
//! - every other outcome (Redis down, timeout, actor killed with the write queued) reaches
//!   the caller as an error, never as an acknowledgement;
//! - a repeated idempotency key answers the first response and buffers nothing new;
//! - after a Redis restart no write fails for a stale connection: a broken connection
//!   replaces the whole pool, and a write that certainly did not run is sent once more at
//!   once (see `stale.rs`); one that may have run (a timeout) is refused, never resent;
//! - writes are refused (`BufferFull`, `MemoryFull`) before Redis runs out of what it may
//!   hold: at a count of unforwarded transactions, and at a share of Redis' `maxmemory`
//!   (see `memory.rs`), so the forwarder and the replica tracker can always drain it; and
//!   (`DiskFull`) before Redis' disk is too full for the next AOF rewrite (see `storage.rs`).
//!
//! Group commit: while one pipeline is in flight, new writes queue up and go out together
//! in the next one, so concurrent writers share round trips and fsyncs. Only one pipeline
//! is in flight at a time, which also keeps the stream in acknowledgement order.
//!
//! Large writes (more overlay records than `STAGE_RECORDS`, e.g. a bulk registration) go
//! beside the group commits, one at a time, staged in chunks (`flush/staged.rs`), so that
//! no Redis call, and no group commit, waits for a whole bulk. A write sent after another
//! was acknowledged still comes after it in the stream (it is sent only then); writes in
//! flight together have no order. A group-commit write of a record being staged answers
//! `busy`: it is parked and sent again when the staging ends (or every [`BUSY_RETRY`],
//! if the staging is one left behind, which the sweep aborts after
//! [`STAGING_ABANDONED`](crate::overlay::STAGING_ABANDONED)).

mod flush;
pub mod memory;
mod sample;
mod stale;
pub mod storage;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::overlay::{Keys, STAGING_ABANDONED};
use memory::BufferMemory;

/// How long a write parked behind a staging it found in its way waits before it is sent
/// again, when no staged write of this actor is in flight to end it sooner.
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// How often the BufferActor looks for abandoned stagings.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Most abandoned stagings one sweep aborts.
const SWEEP_MAX: usize = 16;

/// What a durable write answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// `true` for creates (`201`), `false` for updates (`200`).
    pub created: bool,
    pub body: Value,
    /// `true` when this is the stored answer of an earlier request with the same
    /// idempotency key.
    #[serde(skip)]
    pub replayed: bool,
    /// Parent rows the write names that were found nowhere (`schema.references = warn`):
    /// answered as a header (HTTP) or `warnings` (TCP), not stored with the answer.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Why a write was not acknowledged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] crate::domain::ValidationError),
    #[error("the idempotency key was already used for a different request")]
    IdempotencyConflict,
    #[error("the buffer holds {0} unforwarded transactions, its configured limit")]
    BufferFull(u64),
    /// Redis' memory is at the buffer's share of its `maxmemory` (or Redis answered OOM).
    #[error("redis uses {used:?} bytes; writes stop at {limit:?} (a share of its maxmemory)")]
    MemoryFull {
        used: Option<u64>,
        limit: Option<u64>,
    },
    /// Redis' disk is short of room for the next AOF rewrite, or its last AOF write failed.
    #[error("redis' disk: {0}")]
    DiskFull(String),
    /// The preset of this fixed operation names a table or column ops-db does not have
    /// (`schema.presets`): an operator's to fix; nothing was stored.
    #[error("the preset of {0} does not fit ops-db's schema")]
    PresetMisfit(&'static str),
    /// `POST /transactions` before any model registry is known (none read from the read
    /// source, no stored copy): nothing was stored.
    #[error("no model registry is known yet")]
    RegistryUnknown,
    /// Nothing was acknowledged and nothing was stored: the write never reached Redis, or
    /// Redis refused it before the script wrote anything. The reason is for logs, not for
    /// callers.
    #[error("buffer unavailable: {0}")]
    Unavailable(String),
    /// Nothing was acknowledged, but the write may have been stored: it was sent (or was
    /// queued or in flight inside the tree) when the answer was lost or timed out. A
    /// retry with the same idempotency key learns which. The reason is for logs.
    #[error("buffer unavailable, the write may have been stored: {0}")]
    MaybeStored(String),
    /// A bug: the write could not be prepared (nothing was stored). Never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub redis_url: String,
    pub keys: Keys,
    pub max_buffered: u64,
    /// Share of Redis' `maxmemory` writes may fill (see `memory.rs`).
    pub max_memory_fraction: f64,
    /// Free disk kept under Redis' directory beyond the AOF's size (see `storage.rs`).
    pub min_disk_free_bytes: u64,
    pub idempotency_ttl: Duration,
    /// Most writes in one group commit.
    pub max_batch: usize,
    /// Connections a group commit is spread over (see `flush.rs`).
    pub connections: usize,
    /// Bound on connecting and on each pipeline round trip.
    pub redis_timeout: Duration,
}

/// Counters for `/metrics` (see [`BufferMetrics::register`]); `/health` reads them too.
#[derive(Debug, Default)]
pub struct BufferMetrics {
    pub acknowledged: Counter,
    pub replayed: Counter,
    pub rejected: Counter,
    pub failed: Counter,
    /// Queued writes not sent because their caller had already timed out.
    pub abandoned: Counter,
    /// Writes sent a second time, on fresh connections, after failing without running.
    pub retried: Counter,
    pub pipelines: Counter,
    /// Stagings of large writes undone: not committed, or left behind (the sweep).
    pub stagings_aborted: Counter,
}

impl BufferMetrics {
    fn add(counter: &Counter, n: usize) {
        counter.inc_by(n as u64);
    }

    /// Registers the counters (the encoder appends `_total` to their names).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "opsdb_writes_acknowledged",
                "Writes made durable and acknowledged",
                &self.acknowledged,
            ),
            (
                "opsdb_writes_replayed",
                "Repeated idempotency keys answered with the first response",
                &self.replayed,
            ),
            (
                "opsdb_writes_rejected",
                "Writes refused: buffer full or idempotency key reused",
                &self.rejected,
            ),
            (
                "opsdb_writes_failed",
                "Writes not acknowledged because Redis failed or was unreachable",
                &self.failed,
            ),
            (
                "opsdb_writes_abandoned",
                "Queued writes dropped unsent because their caller had already timed out",
                &self.abandoned,
            ),
            (
                "opsdb_writes_retried",
                "Writes resent on fresh connections after their connection broke before they ran",
                &self.retried,
            ),
            (
                "opsdb_buffer_pipelines",
                "Redis pipelines sent by the buffer (group commits)",
                &self.pipelines,
            ),
            (
                "opsdb_stagings_aborted",
                "Stagings of large writes undone: not committed, or left behind (the sweep)",
                &self.stagings_aborted,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }
}

/// A write ready for the buffer script: everything serialised once, by the IngestActor.
#[derive(Debug)]
pub struct PreparedWrite {
    pub tx_id: uuid::Uuid,
    pub op: &'static str,
    /// The transaction's JSON, packed for the stream ([`crate::body`]).
    pub tx_body: Vec<u8>,
    /// The overlay records (`OverlayWrite`s) as JSON lists of at most
    /// [`STAGE_RECORDS`](crate::overlay::STAGE_RECORDS) each, one list at least (`[]` for
    /// none). More than one: the write is staged in chunks (`staged.rs`).
    pub overlay: Vec<String>,
    /// `POST /transactions`: the steps, for the lifecycle (`steps`).
    pub summary_json: Option<String>,
    pub idempotency: Option<Idempotent>,
    pub ack: Ack,
}

/// What the buffer script stores for a write with an `Idempotency-Key`.
#[derive(Debug)]
pub struct Idempotent {
    pub key: String,
    /// The request's fingerprint (`ingest.rs`): the same key with another request is a
    /// conflict.
    pub fingerprint: String,
    /// The answer (an [`Ack`] as JSON, packed: [`crate::body`]), returned to a retry
    /// instead of buffering again.
    pub answer: Vec<u8>,
}

pub struct WriteRequest {
    pub write: PreparedWrite,
    pub reply: RpcReplyPort<Result<Ack, IngestError>>,
}

#[derive(Clone)]
pub struct BufferActor;

#[derive(Clone)]
pub struct BufferArgs {
    pub config: Arc<BufferConfig>,
    pub metrics: Arc<BufferMetrics>,
    pub events: Arc<crate::events::EventSink>,
    /// Shared with `/health` and `/metrics`; outlives restarts of the actor.
    pub memory: Arc<BufferMemory>,
}

pub struct BufferState {
    args: BufferArgs,
    client: redis::Client,
    /// `None` until connected, and again after a connection error.
    conns: Option<flush::Connections>,
    pending: VecDeque<WriteRequest>,
    in_flight: bool,
    /// Large writes waiting to be staged, one at a time (`flush/staged.rs`).
    staged: VecDeque<WriteRequest>,
    staged_in_flight: bool,
    /// The staged writes' connection; `None` until connected, in flight, or after an error.
    staged_conn: Option<MultiplexedConnection>,
    /// Writes that found a record of theirs being staged (`busy`), to send again.
    parked: Vec<WriteRequest>,
    /// A sweep for abandoned stagings is in flight.
    sweeping: bool,
    /// The memory sampler's own connection, so a sample never waits behind a group commit.
    /// `None` while a sample is in flight (it has it), or after an error.
    memory_conn: Option<MultiplexedConnection>,
    sampling: bool,
}

pub enum BufferMsg {
    Write(WriteRequest),
    /// The in-flight group commit finished; carries the connections back if still good,
    /// and the writes that found a record of theirs being staged.
    Flushed(flush::Flushed),
    /// The staged write in flight finished; carries its connection back if still good.
    StagedDone(Option<MultiplexedConnection>),
    /// Time to send the parked writes again.
    Unpark,
    /// Time to look for abandoned stagings (every `SWEEP_INTERVAL`).
    Sweep,
    /// The sweep finished.
    Swept,
    /// Time to read Redis' memory (every [`memory::SAMPLE_INTERVAL`]).
    SampleMemory,
    /// The sample finished; carries its connection back if still good.
    MemorySampled(Option<MultiplexedConnection>),
}

impl Actor for BufferActor {
    type Msg = BufferMsg;
    type State = BufferState;
    type Arguments = BufferArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BufferArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let client = redis::Client::open(args.config.redis_url.as_str())?;
        // Connect eagerly so the first write does not pay for it, but do not fail when Redis
        // is down: writes then answer 503 until it is back.
        let conns = flush::connect(&client, &args.config).await.ok();
        // The first sample at once, before the first write if it can be.
        myself.cast(BufferMsg::SampleMemory)?;
        myself.send_interval(memory::SAMPLE_INTERVAL, || BufferMsg::SampleMemory);
        myself.cast(BufferMsg::Sweep)?;
        myself.send_interval(SWEEP_INTERVAL, || BufferMsg::Sweep);
        Ok(BufferState {
            args,
            client,
            conns,
            pending: VecDeque::new(),
            in_flight: false,
            staged: VecDeque::new(),
            staged_in_flight: false,
            staged_conn: None,
            parked: Vec::new(),
            sweeping: false,
            memory_conn: None,
            sampling: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BufferMsg::Write(request) if flush::is_staged(&request.write.overlay) => {
                state.staged.push_back(request);
                maybe_stage(&myself, state);
            }
            BufferMsg::Write(request) => {
                state.pending.push_back(request);
                maybe_flush(&myself, state);
            }
            BufferMsg::Flushed(flushed) => {
                state.in_flight = false;
                state.conns = flushed.conns;
                if !flushed.busy.is_empty() {
                    state.parked.extend(flushed.busy);
                    if !state.staged_in_flight {
                        myself.send_after(BUSY_RETRY, || BufferMsg::Unpark);
                    }
                }
                maybe_flush(&myself, state);
            }
            BufferMsg::StagedDone(conn) => {
                state.staged_in_flight = false;
                state.staged_conn = conn;
                state.pending.extend(state.parked.drain(..));
                maybe_stage(&myself, state);
                maybe_flush(&myself, state);
            }
            BufferMsg::Unpark => {
                state.pending.extend(state.parked.drain(..));
                maybe_flush(&myself, state);
            }
            BufferMsg::Sweep => sweep(&myself, state),
            BufferMsg::Swept => state.sweeping = false,
            BufferMsg::SampleMemory => sample_memory(&myself, state),
            BufferMsg::MemorySampled(conn) => {
                state.sampling = false;
                state.memory_conn = conn;
            }
        }
        Ok(())
    }
}

/// Reads Redis' memory and disk into the shared gauge, unless a read is already in flight.
fn sample_memory(myself: &ActorRef<BufferMsg>, state: &mut BufferState) {
    if state.sampling {
        return;
    }
    state.sampling = true;
    let client = state.client.clone();
    let conn = state.memory_conn.take();
    let timeout = state.args.config.redis_timeout;
    let gauge = Arc::clone(&state.args.memory);
    let myself = myself.clone();
    gauge.asking();
    // Outside the handler, like a group commit: writes never wait for a sample.
    tokio::spawn(async move {
        let (conn, sample) = sample::sample(&client, conn, timeout).await;
        match sample {
            Ok((memory, storage)) => {
                gauge.stored(storage);
                match memory {
                    Some(memory) => gauge.sampled(memory),
                    // INFO refused: the last sample stays, and without any the check is
                    // off; `/health` shows what is known.
                    None => tracing::debug!("redis INFO memory lacks used_memory or maxmemory"),
                }
            }
            // Redis down: writes fail on their own; the last samples stay.
            Err(err) => tracing::debug!(error = %err, "redis memory not sampled"),
        }
        let _ = myself.cast(BufferMsg::MemorySampled(conn));
    });
}

/// Sends everything queued (up to `max_batch`) as one pipeline, unless one is in flight.
fn maybe_flush(myself: &ActorRef<BufferMsg>, state: &mut BufferState) {
    if state.in_flight {
        return;
    }
    // A caller that gave up (its call timed out) was answered 503, "not acknowledged":
    // storing its write now would make that answer wrong.
    let before = state.pending.len();
    state.pending.retain(|w| !w.reply.is_closed());
    let abandoned = before - state.pending.len();
    if abandoned > 0 {
        BufferMetrics::add(&state.args.metrics.abandoned, abandoned);
        tracing::warn!(abandoned, "dropped queued writes whose callers timed out");
    }
    if state.pending.is_empty() {
        return;
    }
    let n = state.pending.len().min(state.args.config.max_batch);
    let batch: Vec<WriteRequest> = state.pending.drain(..n).collect();
    state.in_flight = true;
    let job = flush::Flush {
        client: state.client.clone(),
        conns: state.conns.take(),
        config: Arc::clone(&state.args.config),
        metrics: Arc::clone(&state.args.metrics),
        events: Arc::clone(&state.args.events),
        memory: Arc::clone(&state.args.memory),
    };
    let gauge = Arc::clone(&state.args.memory);
    let myself = myself.clone();
    // The pipeline runs outside the handler so the mailbox keeps filling the next batch.
    // It replies to its callers itself, so a write stored before this actor is killed is
    // still acknowledged.
    tokio::spawn(async move {
        let flushed = job.run(batch).await;
        gauge.flushed();
        let _ = myself.cast(BufferMsg::Flushed(flushed));
    });
}

/// Stages the next large write, unless one is in flight.
fn maybe_stage(myself: &ActorRef<BufferMsg>, state: &mut BufferState) {
    if state.staged_in_flight {
        return;
    }
    let request = loop {
        match state.staged.pop_front() {
            None => return,
            // Its caller gave up: storing it now would make that answer wrong.
            Some(w) if w.reply.is_closed() => {
                BufferMetrics::add(&state.args.metrics.abandoned, 1);
                tracing::warn!("dropped a queued large write whose caller timed out");
            }
            Some(w) => break w,
        }
    };
    state.staged_in_flight = true;
    let job = flush::Flush {
        client: state.client.clone(),
        conns: None,
        config: Arc::clone(&state.args.config),
        metrics: Arc::clone(&state.args.metrics),
        events: Arc::clone(&state.args.events),
        memory: Arc::clone(&state.args.memory),
    };
    let conn = state.staged_conn.take();
    let gauge = Arc::clone(&state.args.memory);
    let myself = myself.clone();
    // Beside the group commits; it answers its caller itself, like a group commit.
    tokio::spawn(async move {
        let conn = job.run_staged(conn, request).await;
        gauge.flushed();
        let _ = myself.cast(BufferMsg::StagedDone(conn));
    });
}

/// Aborts stagings older than `STAGING_ABANDONED` (their service stopped between chunks,
/// or their abort failed), at most `SWEEP_MAX` a time, unless a sweep is in flight.
fn sweep(myself: &ActorRef<BufferMsg>, state: &mut BufferState) {
    if state.sweeping {
        return;
    }
    state.sweeping = true;
    let client = state.client.clone();
    let keys = state.args.config.keys.clone();
    let timeout = state.args.config.redis_timeout;
    let metrics = Arc::clone(&state.args.metrics);
    let myself = myself.clone();
    tokio::spawn(async move {
        if let Err(err) = sweep_once(&client, &keys, timeout, &metrics).await {
            tracing::debug!(error = %err, "abandoned stagings not swept");
        }
        let _ = myself.cast(BufferMsg::Swept);
    });
}

async fn sweep_once(
    client: &redis::Client,
    keys: &Keys,
    timeout: Duration,
    metrics: &BufferMetrics,
) -> redis::RedisResult<()> {
    let mut conn = crate::redis_conn::open(client, "buffer-sweep", timeout, timeout).await?;
    let before = chrono::Utc::now().timestamp_millis() - STAGING_ABANDONED.as_millis() as i64;
    let abandoned: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.staging())
        .arg("-inf")
        .arg(before)
        .arg("LIMIT")
        .arg(0)
        .arg(SWEEP_MAX)
        .query_async(&mut conn)
        .await?;
    for tx in abandoned {
        let Ok(id) = uuid::Uuid::parse_str(&tx) else {
            // Not ours to undo (the scripts write only ids): leave it out of the set.
            let () = redis::cmd("ZREM")
                .arg(keys.staging())
                .arg(&tx)
                .query_async(&mut conn)
                .await?;
            continue;
        };
        crate::overlay::abort_staging(&mut conn, keys, id).await?;
        BufferMetrics::add(&metrics.stagings_aborted, 1);
        tracing::warn!(tx = %id, "aborted an abandoned staging of a large write (never acknowledged)");
    }
    Ok(())
}
