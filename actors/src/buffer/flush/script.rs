//! The buffer script's side of a group commit: one `buffer.lua` call per write, and what
//! each reply means for its caller.

use redis::RedisResult;
use serde_json::json;

use super::super::memory::estimate;
use super::super::stale::{classify, refused_unrun, StaleWrite};
use super::super::storage::DiskRefusal;
use super::super::{Ack, BufferMetrics, IngestError, WriteRequest};
use super::{maybe_stored, unavailable, Flush, Sent};
use crate::overlay::scripts::BUFFER;

/// A buffer or commit script's reply: its status, and the stream id, the first answer
/// of a repeated key (packed: `body.rs`) or the buffer's length.
pub(super) type ScriptReply = RedisResult<(String, Vec<u8>)>;

impl Flush {
    /// One `EVALSHA buffer.lua` per write (see the script's header for its arguments). A
    /// write the memory limit refuses goes without its payload: the script only answers a
    /// repeated idempotency key, or says it is full.
    pub(super) fn script_calls(&self, batch: &[WriteRequest]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let keys = &self.config.keys;
        let max_buffered = self.config.max_buffered.to_string();
        let ttl = self.config.idempotency_ttl.as_secs().max(1).to_string();
        let now = chrono::Utc::now().timestamp_millis().to_string();
        for request in batch {
            let w = &request.write;
            // No idempotency key: two keys, not an empty third (outside the ACL's pattern).
            let (idem_key, fingerprint, answer) = match &w.idempotency {
                Some(i) => (
                    Some(keys.idempotency(&i.key)),
                    i.fingerprint.as_str(),
                    i.answer.as_slice(),
                ),
                None => (None, "", &b""[..]),
            };
            let admitted = self.memory.admit(estimate(w));
            // One list: a staged write (more) never comes here (`staged.rs`).
            let (tx_body, overlay_json) = if admitted {
                (
                    w.tx_body.as_slice(),
                    w.overlay.first().map_or("[]", String::as_str),
                )
            } else {
                (&b""[..], "[]")
            };
            pipe.cmd("EVALSHA")
                .arg(BUFFER.get_hash())
                .arg(3 + usize::from(idem_key.is_some()))
                .arg(keys.stream())
                .arg(keys.lifecycle(w.tx_id))
                .arg(keys.staging())
                .arg(idem_key)
                .arg(&max_buffered)
                .arg(tx_body)
                .arg(w.tx_id.to_string())
                .arg(w.op)
                .arg(fingerprint)
                .arg(answer)
                .arg(&ttl)
                .arg(&now)
                .arg(overlay_json)
                .arg(if admitted { "0" } else { "1" })
                .arg(w.summary_json.as_deref().unwrap_or(""));
        }
        pipe
    }

    /// Answers every caller from its script's reply, except the writes that did not run.
    pub(super) fn answer(&self, batch: Vec<WriteRequest>, results: Vec<ScriptReply>) -> Sent {
        let mut sent = Sent {
            keep: true,
            ..Sent::default()
        };
        let mut buffered = Vec::new();
        for (request, result) in batch.into_iter().zip(results) {
            let result = match result {
                Err(error) => match classify(&error) {
                    Some(why) => {
                        sent.keep = false;
                        sent.stale.push(StaleWrite {
                            request,
                            why,
                            error,
                        });
                        continue;
                    }
                    None => Err(error),
                },
                // A record it writes is being staged by a large write: it goes again
                // once that one is committed or aborted (`BufferActor`).
                Ok((status, _)) if status == "busy" => {
                    sent.busy.push(request);
                    continue;
                }
                ok => ok,
            };
            let (tx_id, op) = (request.write.tx_id, request.write.op);
            let answer = self.interpret(request.write.ack, result, &mut sent.keep);
            if matches!(&answer, Ok(ack) if !ack.replayed) {
                buffered.push(json!({ "id": tx_id, "op": op }));
            }
            let _ = request.reply.send(answer);
        }
        if !buffered.is_empty() {
            // One event per pipeline, not per write.
            self.events
                .emit("tx.buffered", json!({ "transactions": buffered }));
        }
        sent
    }

    pub(super) fn interpret(
        &self,
        ack: Ack,
        result: ScriptReply,
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
                    // Packed (`body.rs`), or JSON as an older build stored it.
                    let unreadable = |e: String| {
                        IngestError::MaybeStored(format!("stored response unreadable: {e}"))
                    };
                    let json =
                        crate::body::unpack(&payload).map_err(|e| unreadable(e.to_string()))?;
                    let mut first: Ack =
                        serde_json::from_slice(&json).map_err(|e| unreadable(e.to_string()))?;
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
                        std::str::from_utf8(&payload)
                            .ok()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(self.config.max_buffered),
                    ))
                }
                "full_memory" => {
                    BufferMetrics::add(&m.rejected, 1);
                    Err(self.memory_full())
                }
                "busy" => {
                    BufferMetrics::add(&m.failed, 1);
                    Err(IngestError::Unavailable(
                        "a record it writes is being written by an unfinished large write".into(),
                    ))
                }
                other => Err(IngestError::MaybeStored(format!(
                    "unexpected script status {other:?}"
                ))),
            },
            // Redis refused the script's first write for memory: nothing was stored. Not
            // a broken connection; the limit refuses writes until a later sample.
            Err(err) if err.code() == Some("OOM") => {
                BufferMetrics::add(&m.rejected, 1);
                if self.memory.oom() {
                    tracing::warn!(error = %err, "redis refused a write for memory (OOM), writes refused until it has room");
                }
                Err(self.memory_full())
            }
            Err(err) => {
                BufferMetrics::add(&m.failed, 1);
                // An error the script did not answer: start the next batch on fresh
                // connections (which reload the script).
                *keep_conn = false;
                tracing::warn!(error = %err, "buffer script failed, write refused");
                if refused_unrun(&err) {
                    Err(unavailable(&err))
                } else {
                    Err(maybe_stored(&err))
                }
            }
        }
    }

    /// Why the admission refused a write: the disk when it is refusing, else memory.
    pub(super) fn memory_full(&self) -> IngestError {
        match self.memory.disk_refusal() {
            Some(DiskRefusal::AofWriteFailed) => {
                return IngestError::DiskFull("redis' last AOF write failed".into())
            }
            Some(DiskRefusal::Low { free, needed }) => {
                return IngestError::DiskFull(format!(
                    "{free} bytes free, writes stop below {needed} (AOF size + buffer.min_disk_free_bytes)"
                ))
            }
            None => {}
        }
        let view = self.memory.view();
        IngestError::MemoryFull {
            used: view.used_bytes,
            limit: view.limit_bytes,
        }
    }
}
