//! The Lua scripts that write the overlay, settle transactions and release the overlay,
//! and the one `redis::Script` of each (its SHA-1 is computed once, at first use).
//!
//! Guarantees:
//! - each script runs atomically in Redis (no other command interleaves), so a write, a
//!   settlement or a release is seen whole or not at all;
//! - each script's header says which keys it receives in `KEYS` and which it touches
//!   without declaring them: keys handed over whole inside `ARGV`, or derived from a key
//!   prefix in `ARGV` (built by [`Keys`](super::Keys)) and an id it reads in Redis. All of
//!   them are in the site's prefix; none is found by scanning.
//!
//! `overlay_release.lua` defines `release_overlay` (and `drop_undo`), shared by
//! `settle.lua`, `replicated.lua` and `abort.lua`; `overlay_write.lua` defines the record
//! writes and write checks shared by `buffer.lua`, `stage.lua` and `commit.lua`. Each is
//! prepended to its users at compile time, so each is one script.
//!
//! **Large writes in chunks.** A transaction of more than [`STAGE_RECORDS`] overlay
//! records (a bulk registration of 1,000 files) is not one `buffer.lua` call, which would
//! hold Redis (and every other write) for tens of milliseconds: `stage.lua` writes its
//! records a chunk at a time, invisible to readers and to the forwarder, and `commit.lua`
//! then makes it buffered in one short step; `abort.lua` undoes a staging that is not
//! committed.
//!
//! **At Redis' `maxmemory`.** Redis refuses a script over its `maxmemory` at its first
//! command that may grow memory, unless the script is flagged `allow-oom`. The scripts
//! that drain the buffer or only free memory carry that flag (a `#!lua flags=allow-oom`
//! line prepended at compile time): `settle.lua` (a stream entry out, a lifecycle field
//! and a set member in; a dead letter moved, not copied), `replicated.lua` (frees),
//! `dead_entry.lua` (an entry moved to the dead letters), `group_create.lua` (the
//! consumer group, a few bytes) and `events.lua` (the capped event log: trimmed as it is
//! written, so its size stays bounded by `events.stream_cap`). So a Redis filled past its
//! `maxmemory` (by anything: another tenant, a lowered limit) still drains, and the drain
//! is what frees memory. `buffer.lua` and the dead-letter retry are not flagged: they add.

use std::sync::LazyLock;

use redis::Script;

/// `buffer.lua`: stream entry, lifecycle, overlay and idempotency record of one write.
pub(crate) static BUFFER: LazyLock<Script> = LazyLock::new(|| Script::new(BUFFER_LUA));

/// `stage.lua`: one chunk of a large write's overlay records, not yet visible.
pub(crate) static STAGE: LazyLock<Script> = LazyLock::new(|| Script::new(STAGE_LUA));

/// `commit.lua`: a staged write made buffered (stream entry, lifecycle, idempotency).
pub(crate) static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));

/// `abort.lua`: a staged write that will not be committed, undone a budget at a time.
pub(crate) static ABORT: LazyLock<Script> = LazyLock::new(|| Script::new(ABORT_LUA));

/// `overlay_read.lua`: overlay records and the stagings in progress, read together.
pub(crate) static OVERLAY_READ: LazyLock<Script> = LazyLock::new(|| Script::new(OVERLAY_READ_LUA));

/// `settle.lua`: a committed batch's outcome (forwarded or dead), acked off the stream.
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));

/// `replicated.lua`: transactions the replica has replayed, and the overlay they release.
pub(crate) static REPLICATED: LazyLock<Script> = LazyLock::new(|| Script::new(REPLICATED_LUA));

/// `dlq_retry.lua`: a dead letter back at the end of the stream.
pub(crate) static DLQ_RETRY: LazyLock<Script> = LazyLock::new(|| Script::new(DLQ_RETRY_LUA));

/// `dlq_drop.lua`: a dead letter removed for good.
pub(crate) static DLQ_DROP: LazyLock<Script> = LazyLock::new(|| Script::new(DLQ_DROP_LUA));

/// `dead_entry.lua`: a stream entry the forwarder cannot decode, dead-lettered.
pub(crate) static DEAD_ENTRY: LazyLock<Script> = LazyLock::new(|| Script::new(DEAD_ENTRY_LUA));

/// `events.lua`: events numbered, kept in the capped stream and published.
pub(crate) static EVENTS: LazyLock<Script> = LazyLock::new(|| Script::new(EVENTS_LUA));

/// `resend.lua`: a forwarded transaction the primary lacks, back at the end of the stream.
pub(crate) static RESEND: LazyLock<Script> = LazyLock::new(|| Script::new(RESEND_LUA));

/// `group_create.lua`: the forwarder's consumer group, created if missing.
pub(crate) static GROUP_CREATE: LazyLock<Script> = LazyLock::new(|| Script::new(GROUP_CREATE_LUA));

/// `oldest_ids.lua`: the oldest ids of the stream and the resend window, without bodies.
static OLDEST_IDS: LazyLock<Script> = LazyLock::new(|| Script::new(OLDEST_IDS_LUA));

/// The ids of the oldest entries of the buffer's stream and of the resend window (`None`
/// for an empty one), in one script call that sends back the ids only: health reads the
/// oldest entry's age this way, never its body.
pub async fn oldest_ids(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &super::Keys,
) -> redis::RedisResult<(Option<String>, Option<String>)> {
    OLDEST_IDS
        .key(keys.stream())
        .key(keys.sent())
        .invoke_async(conn)
        .await
}

/// Most transactions one `replicated.lua` or `settle.lua` call covers. Redis runs a script
/// alone, so every ingest write waits for the call in progress: a transaction costs about
/// 4-8 commands plus its records (bounded below). Measured on a 2-core machine (the
/// `backlog` tests): 200 transactions / 500 records took 6-7 ms a call, 100 / 250 about
/// 6 ms, and both doubled ingest p99 while a backlog was worked off; 50 / 100 took about
/// 2.5 ms, but up to 6.7-11.5 ms in `bench outage` (100,000 transactions, the primary
/// applying beside it on the same two cores), over issue 19's 5 ms; 25 / 50 is half that.
/// A backlog of 100,000 is 4,000 calls.
pub(crate) const TXS_PER_CALL: usize = 25;

/// Most overlay records one script call releases (about 5 commands each: HGET `_tx`, HGET
/// `_idx`, ZREM per index, DEL; undoing a dead update's write over a pending image about
/// 15, dropping a forwarded one's undo entry 1). A bulk registration is one transaction of up to 1,000
/// records: its release is split over calls (twenty for 1,000). With [`TXS_PER_CALL`], one
/// call runs at most about 25 × 8 + 50 × 5 ≈ 450 Redis commands, plus decoding one
/// lifecycle's `records` list (at most 1,000 keys) and encoding what remains of it.
pub(crate) const RECORDS_PER_CALL: usize = 50;

/// Most overlay records one `buffer.lua` or `stage.lua` call writes: a write of more is
/// staged in chunks of this many. A record costs about 5-10 commands (HGET, HMGET, HSET,
/// ZADD per index, and over a pending image an undo entry); measured on a 2-core machine,
/// a 1,000-file bulk in one call held Redis 16-74 ms, so 50 records are about 1-2 ms.
pub const STAGE_RECORDS: usize = 50;

/// A staging this old (its start, as the staging set scores it) is abandoned: the service
/// that began it stopped, or its chunks failed and its abort did too. The BufferActor's
/// sweep aborts it. Far above the few milliseconds a staging takes, and above any
/// `redis.timeout` the chunks may still arrive within (a chunk after the abort writes
/// nothing).
pub const STAGING_ABANDONED: std::time::Duration = std::time::Duration::from_secs(30);

/// The overlay writes of a hand-built transaction, as the IngestActor makes them.
#[cfg(feature = "fault-injection")]
fn overlay_of(keys: &super::Keys, tx: &crate::domain::Transaction) -> Vec<super::OverlayWrite> {
    tx.steps
        .iter()
        .map(|step| super::OverlayWrite::of_step(keys, step))
        .collect()
}

/// Buffers a hand-built transaction through `buffer.lua` as the BufferActor would (no
/// idempotency key, no memory check), for tests of writes no operation builds yet (an
/// update of an indexed column); only with the `fault-injection` feature. Returns the
/// script's answer (`ok` and the stream id, or why not).
#[cfg(feature = "fault-injection")]
pub async fn buffer_transaction(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &super::Keys,
    tx: &crate::domain::Transaction,
) -> redis::RedisResult<(String, String)> {
    let overlay = overlay_of(keys, tx);
    let unserialisable = |e: serde_json::Error| redis::ParsingError::from(e.to_string());
    let tx_json = serde_json::to_vec(tx).map_err(unserialisable)?;
    let overlay_json = serde_json::to_string(&overlay).map_err(unserialisable)?;
    BUFFER
        .key(keys.stream())
        .key(keys.lifecycle(tx.id))
        .key(keys.staging())
        .arg(u64::MAX)
        .arg(crate::body::pack(&tx_json))
        .arg(tx.id.to_string())
        .arg(&tx.op)
        .arg("")
        .arg("")
        .arg(1)
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(overlay_json)
        .arg("0")
        .invoke_async(redis)
        .await
}

/// Aborts the staging of `tx` (`abort.lua`), a budget of records per call, until it is
/// gone (also if there was none).
pub async fn abort_staging(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &super::Keys,
    tx: uuid::Uuid,
) -> redis::RedisResult<()> {
    let tx_text = tx.to_string();
    loop {
        let done: i64 = ABORT
            .key(keys.staging())
            .key(keys.staged(tx))
            .arg(&tx_text)
            .arg(RECORDS_PER_CALL)
            .arg(keys.site_prefix())
            .invoke_async(redis)
            .await?;
        // Each call releases at least one record of a finite list, or ends the staging.
        if done == 1 {
            return Ok(());
        }
    }
}

/// Stages a hand-built transaction through `stage.lua` as the BufferActor would, in
/// chunks of [`STAGE_RECORDS`], without committing it, its start dated `started_ms` (unix
/// ms: an old one is what the sweep aborts); only with the `fault-injection` feature.
/// Returns each chunk's answer; [`commit_staged`] commits it.
#[cfg(feature = "fault-injection")]
pub async fn stage_transaction(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &super::Keys,
    tx: &crate::domain::Transaction,
    started_ms: i64,
) -> redis::RedisResult<Vec<(String, String)>> {
    let overlay = overlay_of(keys, tx);
    let mut answers = Vec::new();
    for (i, chunk) in overlay.chunks(STAGE_RECORDS).enumerate() {
        let chunk =
            serde_json::to_string(chunk).map_err(|e| redis::ParsingError::from(e.to_string()))?;
        answers.push(
            STAGE
                .key(keys.staging())
                .key(keys.staged(tx.id))
                .key(keys.stream())
                .arg(i + 1)
                .arg(tx.id.to_string())
                .arg(chunk)
                .arg(started_ms)
                .arg(u64::MAX)
                .arg("")
                .arg("0")
                .invoke_async(redis)
                .await?,
        );
    }
    Ok(answers)
}

/// Commits a transaction [`stage_transaction`] staged (no idempotency key); only with the
/// `fault-injection` feature. Returns the script's answer (`ok` and the stream id).
#[cfg(feature = "fault-injection")]
pub async fn commit_staged(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &super::Keys,
    tx: &crate::domain::Transaction,
) -> redis::RedisResult<(String, String)> {
    let unserialisable = |e: serde_json::Error| redis::ParsingError::from(e.to_string());
    COMMIT
        .key(keys.staging())
        .key(keys.staged(tx.id))
        .key(keys.stream())
        .key(keys.lifecycle(tx.id))
        .arg(tx.steps.len().div_ceil(STAGE_RECORDS).max(1))
        .arg(serde_json::to_string(tx).map_err(unserialisable)?)
        .arg(tx.id.to_string())
        .arg(&tx.op)
        .arg("")
        .arg("")
        .arg(1)
        .arg(chrono::Utc::now().timestamp_millis())
        .arg("")
        .invoke_async(redis)
        .await
}

const BUFFER_LUA: &str = concat!(
    include_str!("index_list.lua"),
    include_str!("overlay_write.lua"),
    include_str!("buffer.lua")
);
const STAGE_LUA: &str = concat!(
    include_str!("index_list.lua"),
    include_str!("overlay_write.lua"),
    include_str!("stage.lua")
);
const COMMIT_LUA: &str = concat!(
    include_str!("index_list.lua"),
    include_str!("overlay_write.lua"),
    include_str!("commit.lua")
);
const ABORT_LUA: &str = concat!(
    "#!lua flags=allow-oom\n",
    include_str!("index_list.lua"),
    include_str!("overlay_release.lua"),
    include_str!("abort.lua")
);
const OVERLAY_READ_LUA: &str = concat!("#!lua flags=no-writes\n", include_str!("overlay_read.lua"));
// `concat!` takes literals only: the flag line is spelled out in each (checked by a test).
const SETTLE_LUA: &str = concat!(
    "#!lua flags=allow-oom\n",
    include_str!("index_list.lua"),
    include_str!("overlay_release.lua"),
    include_str!("settle.lua")
);
const REPLICATED_LUA: &str = concat!(
    "#!lua flags=allow-oom\n",
    include_str!("index_list.lua"),
    include_str!("overlay_release.lua"),
    include_str!("replicated.lua")
);
const DLQ_RETRY_LUA: &str = include_str!("dlq_retry.lua");
const DLQ_DROP_LUA: &str = include_str!("dlq_drop.lua");
const DEAD_ENTRY_LUA: &str = concat!("#!lua flags=allow-oom\n", include_str!("dead_entry.lua"));
const EVENTS_LUA: &str = concat!("#!lua flags=allow-oom\n", include_str!("events.lua"));
const RESEND_LUA: &str = include_str!("resend.lua");
const OLDEST_IDS_LUA: &str = concat!("#!lua flags=no-writes\n", include_str!("oldest_ids.lua"));
const GROUP_CREATE_LUA: &str = concat!("#!lua flags=allow-oom\n", include_str!("group_create.lua"));

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [(&str, &str); 14] = [
        ("oldest_ids.lua", include_str!("oldest_ids.lua")),
        ("buffer.lua", include_str!("buffer.lua")),
        ("stage.lua", include_str!("stage.lua")),
        ("commit.lua", include_str!("commit.lua")),
        ("abort.lua", include_str!("abort.lua")),
        ("overlay_read.lua", include_str!("overlay_read.lua")),
        ("settle.lua", include_str!("settle.lua")),
        ("replicated.lua", include_str!("replicated.lua")),
        ("dlq_retry.lua", DLQ_RETRY_LUA),
        ("dlq_drop.lua", DLQ_DROP_LUA),
        ("dead_entry.lua", include_str!("dead_entry.lua")),
        ("events.lua", include_str!("events.lua")),
        ("group_create.lua", include_str!("group_create.lua")),
        ("resend.lua", RESEND_LUA),
    ];

    /// What drains the buffer or only frees memory runs over Redis' `maxmemory`; what
    /// adds to it does not.
    #[test]
    fn only_the_draining_scripts_run_at_the_memory_limit() {
        const FLAG: &str = "#!lua flags=allow-oom\n";
        for source in [
            SETTLE_LUA,
            REPLICATED_LUA,
            DEAD_ENTRY_LUA,
            EVENTS_LUA,
            GROUP_CREATE_LUA,
            ABORT_LUA,
        ] {
            assert!(source.starts_with(FLAG), "{}", &source[..60]);
        }
        for source in [
            BUFFER_LUA,
            STAGE_LUA,
            COMMIT_LUA,
            DLQ_RETRY_LUA,
            DLQ_DROP_LUA,
            RESEND_LUA,
        ] {
            assert!(!source.contains("allow-oom"));
        }
    }

    /// The header comment is the script's contract with its Rust caller.
    #[test]
    fn every_script_header_names_its_keys() {
        for (name, source) in ALL {
            let header: Vec<&str> = source.lines().take_while(|l| l.starts_with("--")).collect();
            assert!(
                header.iter().any(|l| l.contains("KEYS[1]")),
                "{name}: header lists KEYS"
            );
            assert!(
                header.iter().any(|l| l.contains("Keys not in KEYS")),
                "{name}: header says which keys are not declared"
            );
        }
    }

    /// The scripts write lifecycle states as text; Rust reads them as `TxState`.
    #[test]
    fn every_state_a_script_writes_is_a_tx_state() {
        const FIELD: &str = "'state', '";
        let mut seen = Vec::new();
        for (name, source) in ALL {
            for (at, _) in source.match_indices(FIELD) {
                let rest = &source[at + FIELD.len()..];
                let state = rest.split('\'').next().unwrap_or_default();
                let parsed: crate::overlay::TxState =
                    state.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
                seen.push(parsed);
            }
        }
        assert_eq!(
            seen.len(),
            7,
            "buffered, buffered (commit), forwarded, dead, replicated, buffered (dead-letter \
             retry), buffered (resend)"
        );
    }

    #[test]
    fn release_overlay_is_defined_where_it_is_called() {
        for source in [SETTLE_LUA, REPLICATED_LUA] {
            let defined = source.find("local function release_overlay");
            let called = source.rfind("release_overlay(lifecycle, tx, budget, ");
            assert!(defined.is_some() && defined < called);
        }
        assert!(
            ABORT_LUA.find("local function release_overlay")
                < ABORT_LUA.rfind("release_overlay(staged")
        );
        assert!(!BUFFER_LUA.contains("release_overlay"));
        for source in [BUFFER_LUA, STAGE_LUA, COMMIT_LUA] {
            assert!(source.find("local function idempotent") < source.rfind("idempotent("));
        }
    }
}
