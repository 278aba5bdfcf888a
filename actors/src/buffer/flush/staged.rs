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
//! is unknown because its connection failed (a timeout, a broken connection) is ended as
//! soon as Redis answers on a fresh connection ([`end_unknown`]); one whose commit failed
//! while running, or that a stopped service left, by the BufferActor's sweep, which aborts
//! stagings older than [`STAGING_ABANDONED`](crate::overlay::STAGING_ABANDONED). A commit
//! that arrives after the abort began finds the staging incomplete and stores nothing.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use serde_json::json;
use uuid::Uuid;

use super::super::memory::estimate;
use super::super::stale::refused_unrun;
use super::super::{BufferMetrics, IngestError, WriteRequest};
use super::script::ScriptReply;
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
        let (answer, keep, unknown) = self.stage_and_commit(&mut conn, &request).await;
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
        if unknown {
            tokio::spawn(end_unknown(
                self.client.clone(),
                self.config.keys.clone(),
                self.config.redis_timeout,
                Arc::clone(&self.metrics),
                request.write.tx_id,
            ));
        }
        keep.then_some(conn)
    }

    /// The pipeline of chunks and commit, and what it means; `false` to drop the
    /// connection; `true` last when the pipeline's outcome is unknown because its
    /// connection failed (a timeout, a broken connection), so that the staging, if it is
    /// still there, is ended at once ([`end_unknown`]).
    async fn stage_and_commit(
        &self,
        conn: &mut MultiplexedConnection,
        request: &WriteRequest,
    ) -> (Result<super::super::Ack, IngestError>, bool, bool) {
        let pipe = self.staged_calls(request);
        let chunks = request.write.overlay.len();
        let outcome = tokio::time::timeout(
            self.config.redis_timeout,
            pipe.query_async::<Vec<ScriptReply>>(conn),
        )
        .await;
        BufferMetrics::add(&self.metrics.pipelines, 1);
        let replies = match outcome {
            Ok(Ok(replies)) if replies.len() == chunks + 1 => replies,
            Ok(Ok(replies)) => {
                let why = format!("{} replies to {} calls", replies.len(), chunks + 1);
                BufferMetrics::add(&self.metrics.failed, 1);
                return (Err(IngestError::MaybeStored(why)), false, false);
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "redis failed during a large write, write refused");
                BufferMetrics::add(&self.metrics.failed, 1);
                if refused_unrun(&err) {
                    return (Err(unavailable(&err)), false, false);
                }
                return (Err(maybe_stored(&err)), false, true);
            }
            Err(_) => {
                tracing::warn!("redis timed out during a large write, write refused");
                BufferMetrics::add(&self.metrics.failed, 1);
                return (
                    Err(IngestError::MaybeStored("redis timed out".into())),
                    false,
                    true,
                );
            }
        };
        let mut keep = true;
        // Checked above: one reply per chunk (at least two) and the commit's.
        let [first, chunk_replies @ .., commit] = replies.as_slice() else {
            return (
                Err(IngestError::MaybeStored("no replies".into())),
                false,
                false,
            );
        };
        let staged = matches!(first, Ok((status, _)) if status == "staged");
        if !staged {
            // The first chunk's checks refused it (or it failed): nothing was staged,
            // the other chunks skipped, the commit found nothing.
            return (
                self.interpret(request.write.ack.clone(), first.clone(), &mut keep),
                keep,
                false,
            );
        }
        let commit = commit.clone();
        match commit {
            Ok((ref status, _)) if matches!(status.as_str(), "ok" | "dup" | "conflict") => {
                let answer = self.interpret(request.write.ack.clone(), commit, &mut keep);
                if answer.as_ref().is_ok_and(|ack| !ack.replayed) {
                    return (answer, keep, false);
                }
                // The key was used meanwhile: this staging is not the write stored.
                let aborted = self.abort_now(conn, request.write.tx_id).await;
                (answer, keep && aborted, false)
            }
            // The commit failed while it ran (not a refusal before it, which OOM is): a
            // script that fails part-way keeps what it wrote, so it may have stored the
            // write. No abort (it would undo records of a stored write); the sweep ends
            // the staging if the commit did not run.
            Err(err) if err.code() != Some("OOM") => {
                BufferMetrics::add(&self.metrics.failed, 1);
                tracing::warn!(error = %err, "a large write's commit failed, write refused");
                (Err(maybe_stored(&err)), false, false)
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
                (answer, keep && aborted, false)
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
        let (fingerprint, answer) = w.idempotency.as_ref().map_or(("", &b""[..]), |i| {
            (i.fingerprint.as_str(), i.answer.as_slice())
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
            .arg(w.tx_body.as_slice())
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

/// How long [`end_unknown`] waits before each try: the failed connection's calls have
/// landed or died by then, and a Redis that restarts is given time to load.
const UNKNOWN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Ends the staging of a large write whose pipeline's outcome is unknown because its
/// connection failed (a timeout, a broken connection, Redis killed): each call ran whole
/// or not at all, so if the commit ran, the staging is gone and this finds nothing;
/// otherwise `abort.lua` undoes what was staged, and a commit still on its way after it
/// stores nothing. Without this, the staging's records refused every write (`busy`)
/// until the sweep took it, 30 to 40 s later. Tried on a fresh connection every
/// [`UNKNOWN_RETRY`] until Redis answers, for at most `STAGING_ABANDONED`; after that
/// (or if the service stops meanwhile) the sweep ends it.
async fn end_unknown(
    client: redis::Client,
    keys: crate::overlay::Keys,
    timeout: std::time::Duration,
    metrics: Arc<BufferMetrics>,
    tx: Uuid,
) {
    let deadline = tokio::time::Instant::now() + crate::overlay::STAGING_ABANDONED;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(UNKNOWN_RETRY).await;
        let attempt = async {
            let mut conn =
                crate::redis_conn::open(&client, "buffer-staged-end", timeout, timeout).await?;
            let staged: bool = redis::cmd("EXISTS")
                .arg(keys.staged(tx))
                .query_async(&mut conn)
                .await?;
            if staged {
                abort_staging(&mut conn, &keys, tx).await?;
            }
            RedisResult::Ok(staged)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(true)) => {
                BufferMetrics::add(&metrics.stagings_aborted, 1);
                tracing::warn!(%tx, "aborted the staging of a large write whose connection failed (answered 503, never acknowledged)");
                return;
            }
            Ok(Ok(false)) => return,
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

/// Whether a write is staged (more than one chunk) rather than one `buffer.lua` call.
pub(in crate::buffer) fn is_staged(overlay: &[String]) -> bool {
    overlay.len() > 1
}
