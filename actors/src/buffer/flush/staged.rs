//! A large write (more overlay records than
//! [`STAGE_RECORDS`](crate::overlay::STAGE_RECORDS): a bulk registration of
//! 1,000 files) buffered in chunks, beside the group commits.
//!
//! One pipeline on the staged writes' own connection: `stage.lua` once per chunk, then
//! `commit.lua`. Redis serves other connections between the calls, so no call holds it
//! for long, and the group commits go on meanwhile (a write of one of the staged records
//! answers `busy` and is sent again once the staging ends). The write is acknowledged only
//! when the commit answered `ok`: until then it has no stream entry and no lifecycle, and
//! readers do not see it (`stage.lua`).
//!
//! A staging that is not committed (a chunk refused, the idempotency key used meanwhile)
//! is aborted here at once (`abort.lua`, a budget of records per call); one whose outcome
//! is unknown (a timeout, a broken connection, a commit that failed while running) is
//! left to the BufferActor's sweep, which aborts stagings older than
//! [`STAGING_ABANDONED`](crate::overlay::STAGING_ABANDONED): a commit that arrives after
//! the abort began finds the staging incomplete and stores nothing.

use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use serde_json::json;
use uuid::Uuid;

use super::super::memory::estimate;
use super::super::stale::refused_unrun;
use super::super::{BufferMetrics, IngestError, WriteRequest};
use super::{maybe_stored, unavailable, Flush};
use crate::overlay::abort_staging;
use crate::overlay::scripts::{ABORT, COMMIT, STAGE};

/// Opens the staged writes' connection and loads their scripts.
pub(in crate::buffer) async fn connect(
    client: &redis::Client,
    timeout: std::time::Duration,
) -> RedisResult<MultiplexedConnection> {
    let mut conn = crate::redis_conn::open(client, "buffer-staged", timeout, timeout).await?;
    for script in [&*STAGE, &*COMMIT, &*ABORT] {
        script.load_async(&mut conn).await?;
    }
    Ok(conn)
}

impl Flush {
    /// Stages and commits one large write, answers its caller, and returns the connection
    /// if it is still good.
    pub async fn run_staged(
        &self,
        conn: Option<MultiplexedConnection>,
        request: WriteRequest,
    ) -> Option<MultiplexedConnection> {
        let mut conn = match conn {
            Some(conn) => conn,
            None => match connect(&self.client, self.config.redis_timeout).await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "redis unreachable, large write refused");
                    self.fail_all(vec![request], &unavailable(&err));
                    return None;
                }
            },
        };
        let (answer, keep) = self.stage_and_commit(&mut conn, &request).await;
        if let Ok(ack) = &answer {
            if !ack.replayed {
                let w = &request.write;
                self.events.emit(
                    "tx.buffered",
                    json!({ "transactions": [{ "id": w.tx_id, "op": w.op }] }),
                );
            }
        }
        let _ = request.reply.send(answer);
        keep.then_some(conn)
    }

    /// The pipeline of chunks and commit, and what it means; `false` to drop the
    /// connection.
    async fn stage_and_commit(
        &self,
        conn: &mut MultiplexedConnection,
        request: &WriteRequest,
    ) -> (Result<super::super::Ack, IngestError>, bool) {
        let pipe = self.staged_calls(request);
        let chunks = request.write.overlay.len();
        let outcome = tokio::time::timeout(
            self.config.redis_timeout,
            pipe.query_async::<Vec<RedisResult<(String, String)>>>(conn),
        )
        .await;
        BufferMetrics::add(&self.metrics.pipelines, 1);
        let replies = match outcome {
            Ok(Ok(replies)) if replies.len() == chunks + 1 => replies,
            Ok(Ok(replies)) => {
                let why = format!("{} replies to {} calls", replies.len(), chunks + 1);
                BufferMetrics::add(&self.metrics.failed, 1);
                return (Err(IngestError::MaybeStored(why)), false);
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "redis failed during a large write, write refused");
                BufferMetrics::add(&self.metrics.failed, 1);
                let answer = if refused_unrun(&err) {
                    unavailable(&err)
                } else {
                    maybe_stored(&err)
                };
                return (Err(answer), false);
            }
            Err(_) => {
                tracing::warn!("redis timed out during a large write, write refused");
                BufferMetrics::add(&self.metrics.failed, 1);
                return (
                    Err(IngestError::MaybeStored("redis timed out".into())),
                    false,
                );
            }
        };
        let mut keep = true;
        // Checked above: one reply per chunk (at least two) and the commit's.
        let [first, chunk_replies @ .., commit] = replies.as_slice() else {
            return (Err(IngestError::MaybeStored("no replies".into())), false);
        };
        let staged = matches!(first, Ok((status, _)) if status == "staged");
        if !staged {
            // The first chunk's checks refused it (or it failed): nothing was staged,
            // the other chunks skipped, the commit found nothing.
            return (
                self.interpret(request.write.ack.clone(), first.clone(), &mut keep),
                keep,
            );
        }
        let commit = commit.clone();
        match commit {
            Ok((ref status, _)) if matches!(status.as_str(), "ok" | "dup" | "conflict") => {
                let answer = self.interpret(request.write.ack.clone(), commit, &mut keep);
                if answer.as_ref().is_ok_and(|ack| !ack.replayed) {
                    return (answer, keep);
                }
                // The key was used meanwhile: this staging is not the write stored.
                let aborted = self.abort_now(conn, request.write.tx_id).await;
                (answer, keep && aborted)
            }
            // The commit failed while it ran (not a refusal before it, which OOM is): it
            // may have stored the write. No abort (it would undo records of a stored
            // write); the sweep ends the staging if the commit did not run.
            Err(err) if err.code() != Some("OOM") => {
                BufferMetrics::add(&self.metrics.failed, 1);
                tracing::warn!(error = %err, "a large write's commit failed, write refused");
                (Err(maybe_stored(&err)), false)
            }
            // Not committed: the first chunk that did not stage says why.
            Ok(_) | Err(_) => {
                let why = chunk_replies
                    .iter()
                    .find(|r| !matches!(r, Ok((status, _)) if status == "staged"))
                    .cloned()
                    .unwrap_or(commit);
                let answer = match why {
                    Err(err) if err.code() == Some("OOM") => {
                        BufferMetrics::add(&self.metrics.rejected, 1);
                        Err(self.memory_full())
                    }
                    Err(err) => {
                        BufferMetrics::add(&self.metrics.failed, 1);
                        tracing::warn!(error = %err, "a chunk of a large write failed, write refused");
                        keep = false;
                        Err(IngestError::Unavailable(err.to_string()))
                    }
                    Ok((status, _)) => {
                        BufferMetrics::add(&self.metrics.failed, 1);
                        Err(IngestError::Unavailable(format!(
                            "a large write was not committed ({status})"
                        )))
                    }
                };
                let aborted = self.abort_now(conn, request.write.tx_id).await;
                (answer, keep && aborted)
            }
        }
    }

    /// One `stage.lua` per chunk, then `commit.lua` (see the scripts' headers).
    fn staged_calls(&self, request: &WriteRequest) -> redis::Pipeline {
        let w = &request.write;
        let keys = &self.config.keys;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let idem_key = w.idempotency.as_ref().map(|i| keys.idempotency(&i.key));
        let (fingerprint, answer) = w.idempotency.as_ref().map_or(("", ""), |i| {
            (i.fingerprint.as_str(), i.answer_json.as_str())
        });
        let admitted = self.memory.admit(estimate(w));
        let now = chrono::Utc::now().timestamp_millis().to_string();
        let tx = w.tx_id.to_string();
        let idem_keys = usize::from(idem_key.is_some());
        for (i, chunk) in w.overlay.iter().enumerate() {
            debug_assert!(i > 0 || chunk.len() > 2, "a staged write has records");
            let first_refused = i == 0 && !admitted;
            pipe.cmd("EVALSHA")
                .arg(STAGE.get_hash())
                .arg(3 + idem_keys)
                .arg(keys.staging())
                .arg(keys.staged(w.tx_id))
                .arg(keys.stream())
                .arg(&idem_key)
                .arg(i + 1)
                .arg(&tx)
                .arg(if first_refused { "[]" } else { chunk.as_str() })
                .arg(&now)
                .arg(self.config.max_buffered)
                .arg(fingerprint)
                .arg(if first_refused { "1" } else { "0" });
        }
        pipe.cmd("EVALSHA")
            .arg(COMMIT.get_hash())
            .arg(4 + idem_keys)
            .arg(keys.staging())
            .arg(keys.staged(w.tx_id))
            .arg(keys.stream())
            .arg(keys.lifecycle(w.tx_id))
            .arg(&idem_key)
            .arg(w.overlay.len())
            .arg(&w.tx_json)
            .arg(&tx)
            .arg(w.op)
            .arg(fingerprint)
            .arg(answer)
            .arg(self.config.idempotency_ttl.as_secs().max(1))
            .arg(&now)
            .arg(w.summary_json.as_deref().unwrap_or(""));
        pipe
    }

    /// Aborts a staging that will not be committed; `false` if that failed (the sweep
    /// will).
    async fn abort_now(&self, conn: &mut MultiplexedConnection, tx: Uuid) -> bool {
        let aborted = tokio::time::timeout(
            self.config.redis_timeout,
            abort_staging(conn, &self.config.keys, tx),
        )
        .await;
        match aborted {
            Ok(Ok(())) => {
                BufferMetrics::add(&self.metrics.stagings_aborted, 1);
                true
            }
            Ok(Err(err)) => {
                tracing::warn!(%tx, error = %err, "aborting a large write's staging failed; the sweep will");
                false
            }
            Err(_) => {
                tracing::warn!(%tx, "aborting a large write's staging timed out; the sweep will");
                false
            }
        }
    }
}

/// Whether a write is staged (more than one chunk) rather than one `buffer.lua` call.
pub(in crate::buffer) fn is_staged(overlay: &[String]) -> bool {
    overlay.len() > 1
}
