//! The dead-letter stream: transactions the primary rejected for good, with its reason.
//! Operators list them, retry them (back into the buffer's stream, at its end) or drop them.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use redis::{RedisResult, Script};
use serde::Serialize;

use crate::overlay::Keys;

#[derive(Debug, Clone, PartialEq, Serialize)]
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

static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS[1] dead letters, KEYS[2] stream; ARGV[1] dead-letter id, ARGV[2] lifecycle prefix
        local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
        if not entry then return false end
        local f = {}
        for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
        local sid = redis.call('XADD', KEYS[2], '*', 'tx', f['tx'])
        redis.call('XDEL', KEYS[1], ARGV[1])
        local lifecycle = ARGV[2] .. f['transaction_id']
        redis.call('HSET', lifecycle, 'state', 'buffered', 'stream_id', sid)
        redis.call('HINCRBY', lifecycle, 'dlq_retries', 1)
        redis.call('PERSIST', lifecycle)
        return sid",
    )
});

static DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS[1] dead letters; ARGV[1] dead-letter id, ARGV[2] lifecycle prefix, ARGV[3] now
        local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
        if not entry then return 0 end
        for i = 1, #entry[2], 2 do
          if entry[2][i] == 'transaction_id' then
            redis.call('HSET', ARGV[2] .. entry[2][i + 1], 'dropped_at', ARGV[3])
          end
        end
        return redis.call('XDEL', KEYS[1], ARGV[1])",
    )
});

fn field(map: &HashMap<String, redis::Value>, name: &str) -> String {
    map.get(name)
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .unwrap_or_default()
}

pub async fn list(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    limit: usize,
) -> RedisResult<Vec<DeadLetter>> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.dead_letters())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(limit)
        .query_async(conn)
        .await?;
    Ok(reply
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
        .collect())
}

/// Puts a dead letter back at the end of the buffer's stream; its new stream id, or
/// `None` if there is no such dead letter.
pub async fn retry(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    id: &str,
) -> RedisResult<Option<String>> {
    RETRY
        .key(keys.dead_letters())
        .key(keys.stream())
        .arg(id)
        .arg(keys.lifecycle_prefix())
        .invoke_async(conn)
        .await
}

/// Removes a dead letter for good; `false` if there is no such dead letter.
pub async fn drop(conn: &mut MultiplexedConnection, keys: &Keys, id: &str) -> RedisResult<bool> {
    let removed: i64 = DROP
        .key(keys.dead_letters())
        .arg(id)
        .arg(keys.lifecycle_prefix())
        .arg(chrono::Utc::now().timestamp_millis())
        .invoke_async(conn)
        .await?;
    Ok(removed > 0)
}
