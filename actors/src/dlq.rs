//! The dead-letter stream: transactions the primary rejected for good, with its reason.
//! Operators list them, retry them (back into the buffer's stream, at its end) or drop them.
//!
//! Every id these functions take is an [`EntryId`]: a complete stream id, `<ms>-<seq>`.
//! Redis reads a bare `<ms>` as a range (every entry of that millisecond) in `XRANGE` but
//! as `<ms>-0` in `XDEL`, so a bare id would retry one entry and delete another.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use redis::RedisResult;
use serde::Serialize;

use crate::overlay::scripts::{DLQ_DROP, DLQ_RETRY};
use crate::overlay::Keys;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what retry and drop take).
    pub id: String,
    pub transaction_id: String,
    pub op: Option<String>,
    pub sqlstate: String,
    pub reason: String,
    /// How many times the primary was asked to apply it.
    pub attempts: u64,
    pub dead_at_ms: i64,
    pub transaction: Option<serde_json::Value>,
}

fn field(map: &HashMap<String, redis::Value>, name: &str) -> String {
    map.get(name)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .unwrap_or_default()
}

/// A complete stream id, `<ms>-<seq>` (both unsigned 64-bit decimals), as Redis gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId {
    ms: u64,
    seq: u64,
}

/// Text that is not a complete stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream id (<ms>-<seq>, 1 to 19 digits each)")]
pub struct BadEntryId(pub String);

impl std::str::FromStr for EntryId {
    type Err = BadEntryId;

    fn from_str(text: &str) -> Result<Self, BadEntryId> {
        let bad = || BadEntryId(text.to_owned());
        let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
        // 1 to 19 digits, as the document's pattern says: always a u64 (Redis' ids are
        // milliseconds since 1970, 13 digits, and a count); `u64::from_str` alone would
        // also take a leading `+`.
        let number = |part: &str| {
            ((1..=19).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(bad)
        };
        Ok(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The most dead letters one page lists: a dead-letter stream of a days-long outage is
/// read page by page, never whole.
pub const MAX_PAGE: usize = 1000;

/// One page of dead letters, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Whether there are more after this page.
    pub more: bool,
    /// What the next page starts after (the last id listed), if there are more.
    pub next_cursor: Option<String>,
}

/// At most `limit` (capped at [`MAX_PAGE`]) dead letters after the stream id `after`
/// (from the oldest if `None`).
pub async fn list(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    limit: usize,
    after: Option<EntryId>,
) -> RedisResult<DeadLetterPage> {
    let limit = limit.clamp(1, MAX_PAGE);
    // `(` makes the start exclusive; one more than the page tells whether there is more.
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.dead_letters())
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(limit + 1)
        .query_async(conn)
        .await?;
    let mut dead_letters = letters(reply);
    let more = dead_letters.len() > limit;
    dead_letters.truncate(limit);
    let next_cursor = more
        .then(|| dead_letters.last().map(|l| l.id.clone()))
        .flatten();
    Ok(DeadLetterPage {
        dead_letters,
        more,
        next_cursor,
    })
}

fn letters(reply: StreamRangeReply) -> Vec<DeadLetter> {
    reply
        .ids
        .into_iter()
        .map(|e| {
            // The body as the stream held it: packed (`body.rs`), or JSON from an older
            // build; `None` if it is neither (an entry that was no transaction).
            let transaction: Option<serde_json::Value> = e
                .map
                .get("tx")
                .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
                .and_then(|stored| {
                    let json = crate::body::unpack(&stored).ok()?;
                    serde_json::from_slice(&json).ok()
                });
            DeadLetter {
                transaction_id: field(&e.map, "transaction_id"),
                op: transaction
                    .as_ref()
                    .and_then(|t| t["op"].as_str())
                    .map(str::to_owned),
                sqlstate: field(&e.map, "sqlstate"),
                reason: field(&e.map, "reason"),
                attempts: field(&e.map, "attempts").parse().unwrap_or(0),
                dead_at_ms: field(&e.map, "dead_at").parse().unwrap_or(0),
                transaction,
                id: e.id,
            }
        })
        .collect()
}

/// Puts a dead letter back at the end of the buffer's stream; its new stream id, or
/// `None` if there is no such dead letter.
pub async fn retry(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    id: EntryId,
) -> RedisResult<Option<String>> {
    DLQ_RETRY
        .key(keys.dead_letters())
        .key(keys.stream())
        .arg(id.to_string())
        .arg(keys.lifecycle_prefix())
        .invoke_async(conn)
        .await
}

/// Removes a dead letter for good; `false` if there is no such dead letter. Its
/// transaction's lifecycle, kept without expiry while the dead letter could be retried,
/// expires after `retention` (`replica.retention`).
pub async fn drop(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    id: EntryId,
    retention: std::time::Duration,
) -> RedisResult<bool> {
    let removed: i64 = DLQ_DROP
        .key(keys.dead_letters())
        .arg(id.to_string())
        .arg(keys.lifecycle_prefix())
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(retention.as_secs().max(1))
        .invoke_async(conn)
        .await?;
    Ok(removed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_stream_id_is_an_entry_id() {
        let id: EntryId = "1700000000000-3".parse().expect("an id");
        assert_eq!(id.to_string(), "1700000000000-3");
        assert_eq!(
            "9999999999999999999-0"
                .parse::<EntryId>()
                .map(|i| i.to_string()),
            Ok("9999999999999999999-0".to_owned())
        );
        for bad in [
            "1700000000000",
            "1700000000000-",
            "-3",
            "+1-2",
            "1-+2",
            "1-2-3",
            "18446744073709551616-0",
            "18446744073709551615-0",
            "01700000000000000000-0",
            "a-b",
            "",
            "1 -2",
            "*",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }
}
