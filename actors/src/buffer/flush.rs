//! One group commit: connect if needed, run the buffer script once per write, answer every
//! caller.
//!
//! The batch is split over several connections. Redis reads at most 16 KiB from a client
//! per event-loop iteration and fsyncs once per iteration (`appendfsync always`), so a large
//! batch on one connection would cost one fsync per 16 KiB; spread over N connections it is
//! read, and fsynced, N times faster. Order within a batch is free (none of its writes is
//! acknowledged yet); across batches it is kept, as the next batch starts only after this
//! one has been answered.
//!
//! Reconnects: a failure on any connection drops them all (after a Redis restart every one
//! of them is dead, and each would otherwise fail one batch of its own). The writes that
//! failed without having run (see `stale.rs`) are sent once more, at once, on a fresh set.

use std::sync::Arc;

use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult};

use super::memory::BufferMemory;
use super::stale::{classify, Stale, StaleWrite};
use super::{BufferConfig, BufferMetrics, IngestError, WriteRequest};
use crate::events::EventSink;
use crate::overlay::scripts::BUFFER;

mod script;
mod staged;

use script::ScriptReply;

pub(super) use staged::is_staged;

/// The connections of one BufferActor incarnation; all of them or none.
pub(super) type Connections = Vec<MultiplexedConnection>;

pub(super) async fn connect(
    client: &redis::Client,
    config: &BufferConfig,
) -> RedisResult<Connections> {
    let timeout = config.redis_timeout;
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        let mut conn = crate::redis_conn::open(client, "buffer", timeout, timeout).await?;
        // EVALSHA needs the script in this server's cache; a new connection may be a new
        // (restarted) server.
        BUFFER.load_async(&mut conn).await?;
        conns.push(conn);
    }
    Ok(conns)
}

pub(super) struct Flush {
    pub client: redis::Client,
    pub conns: Option<Connections>,
    pub config: Arc<BufferConfig>,
    pub metrics: Arc<BufferMetrics>,
    pub events: Arc<EventSink>,
    /// Decides, per write, whether Redis' memory leaves room for it.
    pub memory: Arc<BufferMemory>,
}

/// Nothing was sent, or Redis refused before the script ran: nothing was stored.
fn unavailable(err: &RedisError) -> IngestError {
    super::stale::refusal(err)
}

/// The write was sent and its answer lost: it may have been stored.
fn maybe_stored(err: &RedisError) -> IngestError {
    IngestError::MaybeStored(err.to_string())
}

/// A stale write that is not resent: `NOSCRIPT` ran nothing; a dropped connection may have
/// run it.
fn stale_failure(w: &StaleWrite) -> IngestError {
    match w.why {
        Stale::NoScript => unavailable(&w.error),
        Stale::Dropped => maybe_stored(&w.error),
    }
}

/// What one pipeline left behind.
#[derive(Default)]
struct Sent {
    /// The connection answered everything: keep it.
    keep: bool,
    /// Writes that failed without running, not yet answered.
    stale: Vec<StaleWrite>,
    /// Writes that wrote nothing because a record of theirs is being staged by a large
    /// write (`busy`), not yet answered: the BufferActor sends them again.
    busy: Vec<WriteRequest>,
}

/// What a group commit hands back to the BufferActor.
pub struct Flushed {
    /// The connections, if they are all still good.
    pub conns: Option<Connections>,
    /// Writes to send again after the staging in their way ends (`Sent::busy`).
    pub busy: Vec<WriteRequest>,
}

impl Flush {
    /// Runs the group commit and answers every caller but the busy ones.
    pub async fn run(mut self, batch: Vec<WriteRequest>) -> Flushed {
        let conns = match self.conns.take() {
            Some(conns) => conns,
            None => match self.connect().await {
                Ok(conns) => conns,
                Err(err) => {
                    self.fail_all(batch, &err);
                    return Flushed {
                        conns: None,
                        busy: Vec::new(),
                    };
                }
            },
        };
        let (conns, stale, mut busy) = self.send(conns, batch).await;
        if stale.is_empty() {
            return Flushed { conns, busy };
        }
        let (conns, more) = self.retry(stale).await;
        busy.extend(more);
        Flushed { conns, busy }
    }

    async fn connect(&self) -> Result<Connections, IngestError> {
        connect(&self.client, &self.config).await.map_err(|err| {
            tracing::warn!(error = %err, "redis unreachable, writes refused");
            unavailable(&err)
        })
    }

    /// Spreads `batch` over `conns`; the connections if all of them are still good, the
    /// writes that failed without running, and the busy ones.
    async fn send(
        &self,
        mut conns: Connections,
        batch: Vec<WriteRequest>,
    ) -> (Option<Connections>, Vec<StaleWrite>, Vec<WriteRequest>) {
        let per_conn = batch.len().div_ceil(conns.len()).max(1);
        let mut chunks = Vec::with_capacity(conns.len());
        let mut rest = batch.into_iter();
        for _ in 0..conns.len() {
            let chunk: Vec<WriteRequest> = rest.by_ref().take(per_conn).collect();
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
        }
        let sent = chunks
            .into_iter()
            .zip(conns.iter_mut())
            .map(|(chunk, conn)| self.pipeline(conn, chunk));
        let mut all_good = true;
        let (mut stale, mut busy) = (Vec::new(), Vec::new());
        for one in join_all(sent).await {
            all_good &= one.keep;
            stale.extend(one.stale);
            busy.extend(one.busy);
        }
        (all_good.then_some(conns), stale, busy)
    }

    /// Sends the stale writes once more on a fresh set of connections. Writes whose callers
    /// gave up meanwhile are dropped unsent; a write whose connection broke is resent only
    /// if it did not run (no lifecycle key). Returns the connections and the busy writes.
    async fn retry(&self, stale: Vec<StaleWrite>) -> (Option<Connections>, Vec<WriteRequest>) {
        let (waiting, gone): (Vec<_>, Vec<_>) = stale
            .into_iter()
            .partition(|w| !w.request.reply.is_closed());
        BufferMetrics::add(&self.metrics.abandoned, gone.len());
        if waiting.is_empty() {
            return (None, Vec::new());
        }
        let mut conns = match self.connect().await {
            Ok(conns) => conns,
            Err(_) => {
                for w in waiting {
                    let err = stale_failure(&w);
                    self.fail_all(vec![w.request], &err);
                }
                return (None, Vec::new());
            }
        };
        let Some(resend) = self.not_run(&mut conns[0], waiting).await else {
            return (None, Vec::new());
        };
        BufferMetrics::add(&self.metrics.retried, resend.len());
        tracing::info!(
            writes = resend.len(),
            "redis connections replaced, resending writes that did not run"
        );
        let (conns, still_stale, busy) = self.send(conns, resend).await;
        for w in still_stale {
            let err = stale_failure(&w);
            self.fail_all(vec![w.request], &err);
        }
        (conns, busy)
    }

    /// The writes among `stale` that certainly did not run; the others are answered 503
    /// (they may have been stored: not acknowledged, as after a timeout). `None` when the
    /// check failed: then every one is answered 503, `MaybeStored` unless it ran nothing.
    async fn not_run(
        &self,
        conn: &mut MultiplexedConnection,
        stale: Vec<StaleWrite>,
    ) -> Option<Vec<WriteRequest>> {
        let mut pipe = redis::pipe();
        for w in &stale {
            pipe.exists(self.config.keys.lifecycle(w.request.write.tx_id));
        }
        let checked = tokio::time::timeout(
            self.config.redis_timeout,
            pipe.query_async::<Vec<bool>>(conn),
        )
        .await;
        let exists = match checked {
            Ok(Ok(exists)) if exists.len() == stale.len() => exists,
            _ => {
                tracing::warn!(writes = stale.len(), "redis: checking stale writes failed");
                for w in stale {
                    let err = stale_failure(&w);
                    self.fail_all(vec![w.request], &err);
                }
                return None;
            }
        };
        let mut resend = Vec::with_capacity(stale.len());
        for (w, ran) in stale.into_iter().zip(exists) {
            if ran && w.why == Stale::Dropped {
                self.fail_all(vec![w.request], &maybe_stored(&w.error));
            } else {
                resend.push(w.request);
            }
        }
        Some(resend)
    }

    /// One pipeline on one connection.
    async fn pipeline(&self, conn: &mut MultiplexedConnection, batch: Vec<WriteRequest>) -> Sent {
        let pipe = self.script_calls(&batch);
        let outcome = tokio::time::timeout(
            self.config.redis_timeout,
            pipe.query_async::<Vec<ScriptReply>>(conn),
        )
        .await;
        BufferMetrics::add(&self.metrics.pipelines, 1);
        let failure = match outcome {
            Ok(Ok(results)) if results.len() == batch.len() => {
                return self.answer(batch, results);
            }
            Ok(Ok(results)) => IngestError::MaybeStored(format!(
                "{} replies to {} writes",
                results.len(),
                batch.len()
            )),
            Ok(Err(err)) => match classify(&err) {
                Some(why) => {
                    tracing::info!(error = %err, writes = batch.len(), "redis connection broken");
                    let stale = batch
                        .into_iter()
                        .map(|request| StaleWrite {
                            request,
                            why,
                            error: err.clone(),
                        })
                        .collect();
                    return Sent {
                        keep: false,
                        stale,
                        busy: Vec::new(),
                    };
                }
                None => {
                    tracing::warn!(error = %err, writes = batch.len(), "redis pipeline failed, writes refused");
                    maybe_stored(&err)
                }
            },
            Err(_) => {
                tracing::warn!(
                    writes = batch.len(),
                    "redis pipeline timed out, writes refused"
                );
                IngestError::MaybeStored("redis timed out".into())
            }
        };
        self.fail_all(batch, &failure);
        Sent::default()
    }

    fn fail_all(&self, batch: Vec<WriteRequest>, err: &IngestError) {
        BufferMetrics::add(&self.metrics.failed, batch.len());
        for request in batch {
            let _ = request.reply.send(Err(err.clone()));
        }
    }
}
