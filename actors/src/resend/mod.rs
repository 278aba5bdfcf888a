//! The resend window: forwarded transactions' bodies, kept after they left the stream, so
//! that what a primary lost (a failover to a standby that missed the tail, a restore from
//! a backup) can be sent again.
//!
//! `settle.lua` adds each applied or skipped transaction to the window stream
//! (`Keys::sent`) in the same atomic step that settles it: its stream id, its id and its
//! body packed ([`crate::body`]) as the stream entry held it.
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
