//! One group-commit pipeline: connect if needed, run the buffer script once per write,
//! answer every caller.

use std::sync::{Arc, LazyLock};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult, Script};

use super::{Ack, BufferConfig, BufferMetrics, IngestError, WriteRequest};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("buffer.lua")));

pub(super) async fn connect(
    client: &redis::Client,
    config: &BufferConfig,
) -> RedisResult<MultiplexedConnection> {
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.redis_timeout))
        .set_response_timeout(Some(config.redis_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await?;
    // EVALSHA needs the script in this server's cache; a new connection may be a new
    // (restarted) server.
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(include_str!("buffer.lua"))
        .query_async::<String>(&mut conn)
        .await?;
    Ok(conn)
}

pub(super) struct Flush {
    pub client: redis::Client,
    pub conn: Option<MultiplexedConnection>,
    pub config: Arc<BufferConfig>,
    pub metrics: Arc<BufferMetrics>,
}

fn unavailable(err: &RedisError) -> IngestError {
    IngestError::Unavailable(err.to_string())
}

impl Flush {
    /// Runs the pipeline and answers every caller; returns the connection if it is still good.
    pub async fn run(mut self, batch: Vec<WriteRequest>) -> Option<MultiplexedConnection> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => match connect(&self.client, &self.config).await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, writes = batch.len(), "redis unreachable, writes refused");
                    self.fail_all(batch, &unavailable(&err));
                    return None;
                }
            },
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let keys = &self.config.keys;
        let max_buffered = self.config.max_buffered.to_string();
        let ttl = self.config.idempotency_ttl.as_secs().max(1).to_string();
        let now = chrono::Utc::now().timestamp_millis().to_string();
        for request in &batch {
            let w = &request.write;
            let (idem_key, fingerprint) = match &w.idempotency {
                Some((key, fp)) => (keys.idempotency(key), fp.as_str()),
                None => (String::new(), ""),
            };
            let stored = serde_json::to_string(&w.ack).unwrap_or_default();
            pipe.cmd("EVALSHA")
                .arg(SCRIPT.get_hash())
                .arg(3)
                .arg(keys.stream())
                .arg(keys.lifecycle(w.tx_id))
                .arg(idem_key)
                .arg(&max_buffered)
                .arg(&w.tx_json)
                .arg(w.tx_id.to_string())
                .arg(w.op)
                .arg(fingerprint)
                .arg(stored)
                .arg(&ttl)
                .arg(&now)
                .arg(&w.overlay_json);
        }
        let outcome = tokio::time::timeout(
            self.config.redis_timeout,
            pipe.query_async::<Vec<RedisResult<(String, String)>>>(&mut conn),
        )
        .await;
        BufferMetrics::add(&self.metrics.pipelines, 1);
        let results = match outcome {
            Ok(Ok(results)) if results.len() == batch.len() => results,
            Ok(Ok(results)) => {
                let err = IngestError::Unavailable(format!(
                    "{} replies to {} writes",
                    results.len(),
                    batch.len()
                ));
                self.fail_all(batch, &err);
                return None;
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, writes = batch.len(), "redis pipeline failed, writes refused");
                self.fail_all(batch, &unavailable(&err));
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    writes = batch.len(),
                    "redis pipeline timed out, writes refused"
                );
                self.fail_all(batch, &IngestError::Unavailable("redis timed out".into()));
                return None;
            }
        };
        let mut keep_conn = true;
        for (request, result) in batch.into_iter().zip(results) {
            let answer = self.interpret(request.write.ack, result, &mut keep_conn);
            let _ = request.reply.send(answer);
        }
        keep_conn.then_some(conn)
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
