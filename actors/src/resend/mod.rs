//! The resend window: forwarded transactions' bodies, kept after they left the stream, so
//! that what a primary lost (a failover to a standby that missed the tail, a restore from
//! a backup) can be sent again.
//!
//! `settle.lua` adds each applied or skipped transaction to the window stream
//! (`Keys::sent`) in the same atomic step that settles it: its stream id, its id and its
//! body compressed with zstd ([`pack`]), which the forwarder made while it read the batch.
//! The same call trims the window: entries older than `resend.window` and, oldest first,
//! whatever is over `resend.max_bytes`, at most a few more entries than it added, so a
//! call's work stays bounded. The window is therefore trimmed as batches are settled; with
//! nothing forwarded it stays as it is (bounded by bytes all the same).
//!
//! [`run::resend`] (the admin route `POST /admin/resend`, `ops-db-api resend`) walks the
//! window from a time or a stream id in pages, asks the read source's ledger which of each
//! page's transactions it holds, and puts the others back at the end of the stream. The
//! ledger keeps the primary exactly-once: a transaction sent again that the primary has
//! after all (the read source behind it, a resend run twice) is `skipped` there.

pub mod run;

use std::time::Duration;

use serde::Serialize;

/// zstd's level for the window's bodies: its default, a few hundred MB/s on one core.
const LEVEL: i32 = 3;

/// Bytes counted per window entry besides its compressed body: the stream id, the
/// transaction id and Redis' own per-entry cost, roughly.
pub const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug, Clone)]
pub struct WindowConfig {
    /// How long a forwarded body is kept (`resend.window`); zero keeps none.
    pub window: Duration,
    /// At most this many bytes of window entries (`resend.max_bytes`).
    pub max_bytes: u64,
}

impl WindowConfig {
    pub fn enabled(&self) -> bool {
        !self.window.is_zero() && self.max_bytes > 0
    }
}

/// A transaction's JSON, compressed for the window.
pub fn pack(body: &[u8]) -> Vec<u8> {
    // Compressing a byte slice into memory fails only on allocation failure; an empty
    // body is never stored (the caller skips it), so the window stays honest.
    zstd::bulk::compress(body, LEVEL).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
#[error("a resend window entry does not decompress: {0}")]
pub struct UnpackError(#[from] std::io::Error);

/// Most bytes a window body may decompress to: far above any transaction the service
/// accepts (`http.max_body_bytes`), so a damaged entry cannot take the memory.
const MAX_UNPACKED: usize = 256 * 1024 * 1024;

/// The transaction's JSON back from [`pack`].
pub fn unpack(packed: &[u8]) -> Result<Vec<u8>, UnpackError> {
    let mut out = Vec::new();
    let mut decoder = zstd::stream::read::Decoder::new(packed)?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut decoder, MAX_UNPACKED as u64),
        &mut out,
    )?;
    Ok(out)
}

/// What `/health` shows of the window.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowView {
    /// Transactions in the window.
    pub entries: u64,
    /// Bytes counted against `resend.max_bytes`.
    pub bytes: u64,
    pub max_bytes: u64,
    /// When its oldest entry was settled (RFC 3339), if any: a resend cannot reach back
    /// further than this.
    pub oldest_at: Option<String>,
    /// `resend.window` in seconds.
    pub window_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_comes_back_as_it_was_and_smaller() {
        let body = serde_json::json!({
            "id": "0193a6c4-0000-7000-8000-000000000001",
            "steps": (0..200).map(|i| serde_json::json!({
                "op": "insert", "table": "raw_data_file",
                "values": {"name": format!("file-{i}.fits"), "size": 1000 + i}
            })).collect::<Vec<_>>()
        })
        .to_string();
        let packed = pack(body.as_bytes());
        assert!(
            packed.len() * 4 < body.len(),
            "{} of {}",
            packed.len(),
            body.len()
        );
        assert_eq!(unpack(&packed).expect("unpacks"), body.as_bytes());
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        assert!(unpack(b"not zstd at all").is_err());
        let mut packed = pack(b"{\"id\": 1}");
        packed.truncate(packed.len() / 2);
        assert!(unpack(&packed).is_err());
    }
}
