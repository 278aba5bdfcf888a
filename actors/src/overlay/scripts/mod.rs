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
//! `settle.lua` and `replicated.lua`: it is prepended to each at compile time, so each is
//! one script.
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
/// 6 ms, and both doubled ingest p99 while a backlog was worked off; 50 / 100 take at most
/// about 2.5 ms and keep it within 1.3x. A backlog of 100,000 is still only 2,000 calls.
pub(crate) const TXS_PER_CALL: usize = 50;

/// Most overlay records one script call releases (about 5 commands each: HGET `_tx`, HGET
/// `_idx`, ZREM per index, DEL; undoing a dead update's write over a pending image about
/// 15, dropping a forwarded one's undo entry 1). A bulk registration is one transaction of up to 1,000
/// records: its release is split over calls (ten for 1,000). With [`TXS_PER_CALL`], one
/// call runs at most about 50 × 8 + 100 × 5 ≈ 900 Redis commands, plus decoding one
/// lifecycle's `records` list (at most 1,000 keys) and encoding what remains of it.
pub(crate) const RECORDS_PER_CALL: usize = 100;

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
    let overlay: Vec<super::OverlayWrite> = tx
        .steps
        .iter()
        .map(|step| super::OverlayWrite::of_step(keys, step))
        .collect();
    let unserialisable = |e: serde_json::Error| redis::ParsingError::from(e.to_string());
    let tx_json = serde_json::to_string(tx).map_err(unserialisable)?;
    let overlay_json = serde_json::to_string(&overlay).map_err(unserialisable)?;
    BUFFER
        .key(keys.stream())
        .key(keys.lifecycle(tx.id))
        .arg(u64::MAX)
        .arg(tx_json)
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

const BUFFER_LUA: &str = include_str!("buffer.lua");
// `concat!` takes literals only: the flag line is spelled out in each (checked by a test).
const SETTLE_LUA: &str = concat!(
    "#!lua flags=allow-oom\n",
    include_str!("overlay_release.lua"),
    include_str!("settle.lua")
);
const REPLICATED_LUA: &str = concat!(
    "#!lua flags=allow-oom\n",
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

    const ALL: [(&str, &str); 10] = [
        ("oldest_ids.lua", include_str!("oldest_ids.lua")),
        ("buffer.lua", BUFFER_LUA),
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
        ] {
            assert!(source.starts_with(FLAG), "{}", &source[..60]);
        }
        for source in [BUFFER_LUA, DLQ_RETRY_LUA, DLQ_DROP_LUA, RESEND_LUA] {
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
            6,
            "buffered, forwarded, dead, replicated, buffered (dead-letter retry), buffered (resend)"
        );
    }

    #[test]
    fn release_overlay_is_defined_where_it_is_called() {
        for source in [SETTLE_LUA, REPLICATED_LUA] {
            let defined = source.find("local function release_overlay");
            let called = source.rfind("release_overlay(lifecycle, tx, budget, ");
            assert!(defined.is_some() && defined < called);
        }
        assert!(!BUFFER_LUA.contains("release_overlay"));
    }
}
