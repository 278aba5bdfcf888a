//! Settling a committed batch in Redis: `settle.lua` in bounded calls, sent in pipelines of
//! a bounded number of calls.

use redis::aio::MultiplexedConnection;

use super::{apply, read, ForwardError, ForwarderConfig, Outcome, GROUP};
use crate::overlay::scripts::{RECORDS_PER_CALL, SETTLE, TXS_PER_CALL};

/// Most `settle.lua` calls sent in one pipeline: 40 calls settle up to 1,000 transactions,
/// a few milliseconds of Redis' time, well inside `redis.timeout` on a busy machine.
const CALLS_PER_PIPELINE: usize = 40;

/// Most bytes of compressed bodies (the resend window's entries) one `settle.lua` call
/// carries, besides `TXS_PER_CALL`: a bulk registration's body is tens of kilobytes
/// compressed, and a call that wrote 25 of them into the window took 18 ms in `bench
/// outage`. A body larger than this goes alone.
const BODY_BYTES_PER_CALL: usize = 64 * 1024;

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
        let chunks = chunks(&rest);
        let ahead: usize = chunks.iter().map(|c| c.len()).sum();
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

/// The first `CALLS_PER_PIPELINE` chunks of `rest`, each of at most `TXS_PER_CALL`
/// transactions and `BODY_BYTES_PER_CALL` bytes of bodies (or one transaction).
fn chunks<'r, 'e>(
    rest: &'r [(&'e read::Entry, &'e Outcome)],
) -> Vec<&'r [(&'e read::Entry, &'e Outcome)]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (entry, _)) in rest.iter().enumerate() {
        let size = entry.packed.len();
        if i > start && (i - start == TXS_PER_CALL || bytes + size > BODY_BYTES_PER_CALL) {
            chunks.push(&rest[start..i]);
            if chunks.len() == CALLS_PER_PIPELINE {
                return chunks;
            }
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rest.len() {
        chunks.push(&rest[start..]);
    }
    chunks
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(packed: usize) -> read::Entry {
        read::Entry {
            stream_id: "1-0".into(),
            tx_id: uuid::Uuid::nil(),
            packed: vec![0; packed],
        }
    }

    fn lens(sizes: &[usize]) -> Vec<usize> {
        let entries: Vec<read::Entry> = sizes.iter().map(|&n| entry(n)).collect();
        let outcome = Outcome::Applied;
        let rest: Vec<(&read::Entry, &Outcome)> = entries.iter().map(|e| (e, &outcome)).collect();
        chunks(&rest).iter().map(|c| c.len()).collect()
    }

    #[test]
    fn a_call_carries_at_most_its_count_and_its_bytes_of_bodies_and_a_pipeline_its_calls() {
        assert_eq!(lens(&[100; 60]), vec![25, 25, 10]);
        // 20 KiB each: three fit in 64 KiB, the fourth starts the next call.
        assert_eq!(lens(&[20 * 1024; 7]), vec![3, 3, 1]);
        // One body over the bound goes alone, and takes nothing with it.
        assert_eq!(lens(&[100, 100 * 1024, 100]), vec![1, 1, 1]);
        assert_eq!(lens(&[]), Vec::<usize>::new());
        // No more than CALLS_PER_PIPELINE calls at a time: the rest waits for the next.
        assert_eq!(lens(&[100 * 1024; 50]).len(), CALLS_PER_PIPELINE);
    }
}
