//! One group commit: connect if needed, run the buffer script once per write, answer every
//! caller.
//!
//! The batch is split over several connections. Redis reads at most 16 KiB from a client
//! per event-loop iteration and fsyncs once per iteration (`appendfsync always`), so a large
//! batch on one connection would cost one fsync per 16 KiB; spread over N connections it is
//! read, and fsynced, N times faster. Order within a batch is free (none of its writes is
//! acknowledged yet); across batches it is kept, as the next batch starts only after this
//! one has been answered.

use std::sync::Arc;

use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

use super::{Ack, BufferConfig, BufferMetrics, IngestError, WriteRequest};
use crate::overlay::scripts::BUFFER;

/// The connections of one BufferActor incarnation; all of them or none.
pub(super) type Connections = Vec<MultiplexedConnection>;

pub(super) async fn connect(
    client: &redis::Client,
    config: &BufferConfig,
) -> RedisResult<Connections> {
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.redis_timeout))
        .set_response_timeout(Some(config.redis_timeout));
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await?;
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
}

fn unavailable(err: &RedisError) -> IngestError {
    IngestError::Unavailable(err.to_string())
}

impl Flush {
    /// Runs the group commit and answers every caller; returns the connections if they are
    /// all still good.
    pub async fn run(mut self, batch: Vec<WriteRequest>) -> Option<Connections> {
        let mut conns = match self.conns.take() {
            Some(conns) => conns,
            None => match connect(&self.client, &self.config).await {
                Ok(conns) => conns,
                Err(err) => {
                    tracing::warn!(error = %err, writes = batch.len(), "redis unreachable, writes refused");
                    self.fail_all(batch, &unavailable(&err));
                    return None;
                }
            },
        };
        let per_conn = batch.len().div_ceil(conns.len());
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
        let all_good = join_all(sent).await.into_iter().all(|good| good);
        all_good.then_some(conns)
    }

    /// One pipeline on one connection; `false` if the connection should be dropped.
    async fn pipeline(&self, conn: &mut MultiplexedConnection, batch: Vec<WriteRequest>) -> bool {
        let pipe = self.script_calls(&batch);
        let outcome = tokio::time::timeout(
            self.config.redis_timeout,
            pipe.query_async::<Vec<RedisResult<(String, String)>>>(conn),
        )
        .await;
        BufferMetrics::add(&self.metrics.pipelines, 1);
        let failure = match outcome {
            Ok(Ok(results)) if results.len() == batch.len() => {
                return self.answer(batch, results);
            }
            Ok(Ok(results)) => IngestError::Unavailable(format!(
                "{} replies to {} writes",
                results.len(),
                batch.len()
            )),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, writes = batch.len(), "redis pipeline failed, writes refused");
                unavailable(&err)
            }
            Err(_) => {
                tracing::warn!(
                    writes = batch.len(),
                    "redis pipeline timed out, writes refused"
                );
                IngestError::Unavailable("redis timed out".into())
            }
        };
        self.fail_all(batch, &failure);
        false
    }

    /// One `EVALSHA buffer.lua` per write (see the script's header for its arguments).
    fn script_calls(&self, batch: &[WriteRequest]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let keys = &self.config.keys;
        let max_buffered = self.config.max_buffered.to_string();
        let ttl = self.config.idempotency_ttl.as_secs().max(1).to_string();
        let now = chrono::Utc::now().timestamp_millis().to_string();
        for request in batch {
            let w = &request.write;
            let (idem_key, fingerprint, answer) = match &w.idempotency {
                Some(i) => (
                    keys.idempotency(&i.key),
                    i.fingerprint.as_str(),
                    i.answer_json.as_str(),
                ),
                None => (String::new(), "", ""),
            };
            pipe.cmd("EVALSHA")
                .arg(BUFFER.get_hash())
                .arg(3)
                .arg(keys.stream())
                .arg(keys.lifecycle(w.tx_id))
                .arg(idem_key)
                .arg(&max_buffered)
                .arg(&w.tx_json)
                .arg(w.tx_id.to_string())
                .arg(w.op)
                .arg(fingerprint)
                .arg(answer)
                .arg(&ttl)
                .arg(&now)
                .arg(&w.overlay_json);
        }
        pipe
    }

    /// Answers every caller from its script's reply; `false` if the connection should go.
    fn answer(
        &self,
        batch: Vec<WriteRequest>,
        results: Vec<RedisResult<(String, String)>>,
    ) -> bool {
        let mut keep_conn = true;
        for (request, result) in batch.into_iter().zip(results) {
            let answer = self.interpret(request.write.ack, result, &mut keep_conn);
            let _ = request.reply.send(answer);
        }
        keep_conn
    }

    fn interpret(
        &self,
        ack: Ack,
        result: RedisResult<(String, String)>,
        keep_conn: &mut bool,
    ) -> Result<Ack, IngestError> {
        let m = &self.metrics;
        match result {
            Ok((status, payload)) => match status.as_str() {
                "ok" => {
                    BufferMetrics::add(&m.acknowledged, 1);
                    Ok(ack)
                }
                "dup" => {
                    BufferMetrics::add(&m.replayed, 1);
                    let mut first: Ack = serde_json::from_str(&payload).map_err(|e| {
                        IngestError::Unavailable(format!("stored response unreadable: {e}"))
                    })?;
                    first.replayed = true;
                    Ok(first)
                }
                "conflict" => {
                    BufferMetrics::add(&m.rejected, 1);
                    Err(IngestError::IdempotencyConflict)
                }
                "full" => {
                    BufferMetrics::add(&m.rejected, 1);
                    Err(IngestError::BufferFull(
                        payload.parse().unwrap_or(self.config.max_buffered),
                    ))
                }
                other => Err(IngestError::Unavailable(format!(
                    "unexpected script status {other:?}"
                ))),
            },
            Err(err) => {
                BufferMetrics::add(&m.failed, 1);
                // NOSCRIPT (script cache flushed) or a broken connection: reconnecting
                // reloads the script. The write was not executed either way.
                *keep_conn = false;
                tracing::warn!(error = %err, "buffer script failed, write refused");
                Err(unavailable(&err))
            }
        }
    }

    fn fail_all(&self, batch: Vec<WriteRequest>, err: &IngestError) {
        BufferMetrics::add(&self.metrics.failed, batch.len());
        for request in batch {
            let _ = request.reply.send(Err(err.clone()));
        }
    }
}
