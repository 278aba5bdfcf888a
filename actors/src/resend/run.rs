//! One bounded step of a resend: the window's entries from a point, looked up in the read
//! source's ledger, the ones it lacks put back at the end of the stream.
//!
//! A step scans at most `limit` window entries (pages of [`PAGE`], one ledger query and at
//! most [`PAGE`] script calls each) and says where the next step starts (`next`), so a
//! resend of a week's window is many short requests, never one that holds a connection for
//! minutes. What is put back is an ordinary stream entry: forwarded in order, applied once
//! (the primary's ledger skips what it already has), confirmed by the replica's ledger.
//! A transaction already back in the stream (`buffered`: an earlier resend) is not added
//! twice.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::overlay::scripts::RESEND;
use crate::overlay::Keys;

/// Window entries per page: one `XRANGE`, one ledger query.
pub const PAGE: usize = 200;

/// Where a resend starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Transactions forwarded at or after this time.
    Time(DateTime<Utc>),
    /// Transactions whose stream id (`GET /transactions/{id}`'s `stream_id`) is at or
    /// after this one.
    StreamId(u64, u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("since must be an RFC 3339 time (2026-12-05T14:00:00Z) or a stream id (1796479200000-0), not {0:?}")]
pub struct BadSince(pub String);

impl FromStr for Since {
    type Err = BadSince;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(id) = parse_stream_id(text) {
            return Ok(Since::StreamId(id.0, id.1));
        }
        // RFC 3339 itself: chrono also reads a space for the `T`, which the document's
        // `date-time` does not allow.
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(BadSince(text.to_owned()));
        }
        DateTime::parse_from_rfc3339(text)
            .map(|t| Since::Time(t.with_timezone(&Utc)))
            .map_err(|_| BadSince(text.to_owned()))
    }
}

/// `<ms>-<seq>` as numbers, each of 1 to 19 digits (always a u64, and what the document's
/// pattern says; Redis' ids are milliseconds since 1970, 13 digits, and a count).
pub fn parse_stream_id(text: &str) -> Option<(u64, u64)> {
    let (ms, seq) = text.split_once('-')?;
    let digits = |s: &str| (1..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Since {
    /// The first window entry id that may hold a transaction at or after this point: a
    /// transaction is settled after it was buffered, so its window entry is not older
    /// than its stream id.
    fn window_start(&self) -> String {
        match self {
            Since::Time(t) => format!("{}-0", t.timestamp_millis().max(0)),
            Since::StreamId(ms, _) => format!("{ms}-0"),
        }
    }

    fn includes(&self, stream_id: &str) -> bool {
        match self {
            Since::Time(_) => true,
            Since::StreamId(ms, seq) => {
                parse_stream_id(stream_id).is_some_and(|id| id >= (*ms, *seq))
            }
        }
    }
}

/// What a resend step did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResendReport {
    pub dry_run: bool,
    /// Window entries looked at (from `since`, or from `after`).
    pub scanned: u64,
    /// Of those, transactions the read source's ledger holds.
    pub in_ledger: u64,
    /// Transactions put back in the stream (with `dry_run`: that would be).
    pub resent: u64,
    /// Transactions the ledger lacks that are in the stream already (an earlier resend).
    pub already_queued: u64,
    /// The ids put back (at most the first 100 of this step).
    pub sample: Vec<String>,
    /// Where the next step starts (`after`), or `null` when the window is done.
    pub next: Option<String>,
    /// When the window's oldest entry was settled (RFC 3339), if it has any.
    pub window_oldest_at: Option<String>,
    /// `false` when `since` is older than the window's oldest entry: transactions
    /// forwarded before that are no longer kept and cannot be sent again from here.
    pub window_complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the read source's ledger: {0}")]
    Ledger(#[from] sqlx::Error),
    #[error("the read source's ledger did not answer within {0:?}")]
    LedgerTimeout(Duration),
    #[error("after must be a window entry id such as 1796479200000-3, not {0:?}")]
    BadAfter(String),
}

pub struct Resend<'a> {
    pub redis: &'a mut MultiplexedConnection,
    pub source: &'a PgPool,
    pub keys: &'a Keys,
    /// The service's schema (`schema.name`): where the ledger is.
    pub schema: &'a str,
    pub timeout: Duration,
}

struct Kept {
    entry_id: String,
    /// Its stream id when it was forwarded.
    sid: String,
    tx: Uuid,
    packed: Vec<u8>,
}

impl Kept {
    fn from_reply(entry_id: String, fields: Vec<(String, Vec<u8>)>) -> Self {
        let mut kept = Kept {
            entry_id,
            sid: String::new(),
            tx: Uuid::nil(),
            packed: Vec::new(),
        };
        for (name, value) in fields {
            match name.as_str() {
                "tx" => {
                    kept.tx = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_default()
                }
                "sid" => kept.sid = String::from_utf8_lossy(&value).into_owned(),
                "z" => kept.packed = value,
                _ => {}
            }
        }
        kept
    }

    /// An entry whose id or body is damaged cannot be sent: it is counted as scanned only.
    fn usable(&self) -> bool {
        !self.tx.is_nil() && !self.packed.is_empty()
    }
}

type Reply = Vec<(String, Vec<(String, Vec<u8>)>)>;

impl Resend<'_> {
    /// One step: at most `limit` window entries from `since` (or just after `after`, the
    /// previous step's `next`).
    pub async fn step(
        &mut self,
        since: &Since,
        after: Option<&str>,
        limit: usize,
        dry_run: bool,
    ) -> Result<ResendReport, ResendError> {
        let mut report = ResendReport {
            dry_run,
            ..ResendReport::default()
        };
        self.window_bounds(since, &mut report).await?;
        let mut start = match after {
            Some(after) => {
                parse_stream_id(after).ok_or_else(|| ResendError::BadAfter(after.to_owned()))?;
                format!("({after}")
            }
            None => since.window_start(),
        };
        let mut seen = HashSet::new();
        let limit = limit.max(1);
        while (report.scanned as usize) < limit {
            let count = PAGE.min(limit - report.scanned as usize);
            let reply: Reply = redis::cmd("XRANGE")
                .arg(self.keys.sent())
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(self.redis)
                .await?;
            let full = reply.len() == count;
            report.next = reply.last().map(|(id, _)| id.clone());
            report.scanned += reply.len() as u64;
            if let Some(next) = &report.next {
                start = format!("({next}");
            }
            let page: Vec<Kept> = reply
                .into_iter()
                .map(|(id, fields)| Kept::from_reply(id, fields))
                .filter(|k| k.usable() && since.includes(&k.sid) && seen.insert(k.tx))
                .collect();
            self.resend_missing(page, &mut report).await?;
            if !full {
                // The window ends here.
                report.next = None;
                break;
            }
        }
        Ok(report)
    }

    async fn window_bounds(
        &mut self,
        since: &Since,
        report: &mut ResendReport,
    ) -> Result<(), ResendError> {
        let oldest: Reply = redis::cmd("XRANGE")
            .arg(self.keys.sent())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(self.redis)
            .await?;
        let oldest_ms = oldest
            .first()
            .and_then(|(id, _)| parse_stream_id(id))
            .map(|(ms, _)| ms);
        report.window_oldest_at = oldest_ms.and_then(|ms| {
            DateTime::from_timestamp_millis(ms as i64)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        });
        let since_ms = match since {
            Since::Time(t) => t.timestamp_millis().max(0) as u64,
            Since::StreamId(ms, _) => *ms,
        };
        report.window_complete = oldest_ms.is_some_and(|oldest| oldest <= since_ms);
        Ok(())
    }

    /// The transactions of `page` that the ledger holds.
    async fn in_ledger(&self, page: &[Kept]) -> Result<HashSet<Uuid>, ResendError> {
        let ids: Vec<Uuid> = page.iter().map(|k| k.tx).collect();
        let sql = format!(
            "SELECT transaction_id FROM \"{}\".applied_transaction WHERE transaction_id = ANY($1)",
            self.schema
        );
        let query = sqlx::query_scalar::<_, Uuid>(&sql)
            .bind(&ids)
            .fetch_all(self.source);
        let held = tokio::time::timeout(self.timeout, query)
            .await
            .map_err(|_| ResendError::LedgerTimeout(self.timeout))??;
        Ok(held.into_iter().collect())
    }

    async fn resend_missing(
        &mut self,
        page: Vec<Kept>,
        report: &mut ResendReport,
    ) -> Result<(), ResendError> {
        if page.is_empty() {
            return Ok(());
        }
        let held = self.in_ledger(&page).await?;
        report.in_ledger += held.len() as u64;
        let now = Utc::now().timestamp_millis();
        for kept in page.into_iter().filter(|k| !held.contains(&k.tx)) {
            // Checked before it goes back: the stream gets the body as the window holds
            // it (packed), which the forwarder reads as it read the first time.
            if let Err(e) = crate::body::unpack(&kept.packed) {
                tracing::error!(transaction_id = %kept.tx, entry = %kept.entry_id, error = %e,
                    "a resend window entry is damaged: this transaction cannot be sent again");
                continue;
            }
            let queued = if report.dry_run {
                self.is_queued(kept.tx).await?
            } else {
                let added: i64 = RESEND
                    .key(self.keys.stream())
                    .key(self.keys.lifecycle(kept.tx))
                    .key(self.keys.forwarded())
                    .arg(kept.packed.as_slice())
                    .arg(kept.tx.to_string())
                    .arg(now)
                    .invoke_async(self.redis)
                    .await?;
                added == 0
            };
            if queued {
                report.already_queued += 1;
                continue;
            }
            report.resent += 1;
            if report.sample.len() < 100 {
                report.sample.push(kept.tx.to_string());
            }
        }
        Ok(())
    }

    async fn is_queued(&mut self, tx: Uuid) -> Result<bool, ResendError> {
        let state: Option<String> = redis::cmd("HGET")
            .arg(self.keys.lifecycle(tx))
            .arg("state")
            .query_async(self.redis)
            .await?;
        Ok(state.as_deref() == Some("buffered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_stream_id() {
        assert_eq!(
            "1796479200000-3".parse(),
            Ok(Since::StreamId(1796479200000, 3))
        );
        let t: Since = "2026-12-05T14:00:00Z".parse().expect("a time");
        assert_eq!(t.window_start(), "1796479200000-0");
        for bad in [
            "",
            "yesterday",
            "12-",
            "-3",
            "1796479200000",
            "1-2-3",
            "١٢-3",
            "99999999999999999999-0",
            "2026-12-05 14:00:00Z",
            "12345678901234567890-0",
        ] {
            assert!(bad.parse::<Since>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stream_id_bound_includes_itself_and_later_ids_only() {
        let since = Since::StreamId(100, 2);
        assert!(since.includes("100-2"));
        assert!(since.includes("100-10"));
        assert!(since.includes("101-0"));
        assert!(!since.includes("100-1"));
        assert!(!since.includes("99-9"));
        assert!(!since.includes("garbage"));
    }
}
