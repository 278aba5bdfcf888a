//! The dead-letter stream: transactions the primary rejected for good, with its reason.
//! Operators list them, retry them (back into the buffer's stream, at its end) or drop them.

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
    after: Option<&str>,
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
            let transaction: Option<serde_json::Value> =
                serde_json::from_str(&field(&e.map, "tx")).ok();
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
    id: &str,
) -> RedisResult<Option<String>> {
    DLQ_RETRY
        .key(keys.dead_letters())
        .key(keys.stream())
        .arg(id)
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
    id: &str,
    retention: std::time::Duration,
) -> RedisResult<bool> {
    let removed: i64 = DLQ_DROP
        .key(keys.dead_letters())
        .arg(id)
        .arg(keys.lifecycle_prefix())
        .arg(chrono::Utc::now().timestamp_millis())
        .arg(retention.as_secs().max(1))
        .invoke_async(conn)
        .await?;
    Ok(removed > 0)
}
