//! Settling a committed batch in Redis: `settle.lua` in bounded calls, sent in pipelines of
//! a bounded number of calls.

use redis::aio::MultiplexedConnection;

use super::{apply, read, ForwardError, ForwarderConfig, Outcome, GROUP};
use crate::overlay::scripts::{RECORDS_PER_CALL, SETTLE, TXS_PER_CALL};

/// Most `settle.lua` calls sent in one pipeline: 40 calls settle up to 1,000 transactions,
/// a few milliseconds of Redis' time, well inside `redis.timeout` on a busy machine.
const CALLS_PER_PIPELINE: usize = 40;

/// Settles a committed batch in chunks of at most `TXS_PER_CALL` transactions and
/// `RECORDS_PER_CALL` record releases per script call (Redis runs a script alone, so each
/// call must stay short). Each call is atomic for the transactions it settles; a crash
/// between calls leaves the rest pending in the group, re-read and re-applied (skipped
/// through the ledger) after the restart.
pub(super) async fn settle_batch(
    conn: &mut MultiplexedConnection,
    config: &ForwarderConfig,
    entries: &[read::Entry],
    applied: &apply::Applied,
) -> Result<(), ForwardError> {
    let mut rest: Vec<(&read::Entry, &Outcome)> = entries.iter().zip(&applied.outcomes).collect();
    while !rest.is_empty() {
        // Up to CALLS_PER_PIPELINE chunks in one pipeline: a few local round trips per
        // batch, not one per chunk, each bounded by `redis.timeout` whatever the batch's
        // size. Each script call is still bounded on its own, and Redis serves other
        // clients between them.
        let ahead = rest.len().min(TXS_PER_CALL * CALLS_PER_PIPELINE);
        let chunks: Vec<&[(&read::Entry, &Outcome)]> = rest[..ahead].chunks(TXS_PER_CALL).collect();
        let invocations: Vec<_> = chunks
            .iter()
            .map(|chunk| settle_invocation(config, applied, chunk))
            .collect();
        let mut pipe = redis::pipe();
        // EVALSHA needs the script in this server's cache, which a restart empties.
        pipe.load_script(&SETTLE).ignore();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let settled: Vec<usize> =
            tokio::time::timeout(config.redis_timeout, pipe.query_async(conn))
                .await
                .map_err(|_| ForwardError::RedisTimeout("settling a committed batch"))??;
        // A call settles a prefix of its chunk; 0 or a short prefix only means a dead
        // transaction's overlay release goes on: what is left is sent again.
        let mut left: Vec<(&read::Entry, &Outcome)> = chunks
            .iter()
            .zip(settled)
            .flat_map(|(chunk, done)| chunk[done.min(chunk.len())..].iter().copied())
            .collect();
        left.extend_from_slice(&rest[ahead..]);
        rest = left;
    }
    Ok(())
}

/// One `settle.lua` call for `chunk` (see the script's header for its arguments).
fn settle_invocation<'a>(
    config: &ForwarderConfig,
    applied: &apply::Applied,
    chunk: &[(&read::Entry, &Outcome)],
) -> redis::ScriptInvocation<'a> {
    let keys = &config.keys;
    let mut invocation = SETTLE.prepare_invoke();
    invocation
        .key(keys.stream())
        .key(keys.dead_letters())
        .key(keys.forwarded())
        .key(keys.sent())
        .key(keys.sent_bytes())
        .arg(GROUP)
        .arg(applied.lsn.to_string())
        .arg(applied.lsn.score_ceil().to_string())
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(keys.lifecycle_prefix())
        .arg(RECORDS_PER_CALL)
        .arg(config.window.window.as_millis() as u64)
        .arg(config.window.max_bytes)
        .arg(crate::resend::ENTRY_OVERHEAD);
    for (entry, outcome) in chunk {
        let (name, sqlstate, message) = match outcome {
            Outcome::Applied => ("applied", "", ""),
            Outcome::Skipped => ("skipped", "", ""),
            Outcome::Dead { sqlstate, message } => ("dead", sqlstate.as_str(), message.as_str()),
        };
        invocation
            .arg(&entry.stream_id)
            .arg(entry.tx_id.to_string())
            .arg(name)
            .arg(sqlstate)
            .arg(message)
            .arg(entry.packed.as_slice());
    }
    invocation
}
