//! Redis' slow log, as the benchmarks and the tests read it: every command (a script call
//! is one) slower than 1 ms from a given moment on, with its duration and arguments. What
//! DESIGN §9 bounds ("no Redis call longer than a few milliseconds") is measured here.

use redis::aio::MultiplexedConnection;

/// Calls slower than this are logged, in µs.
const SLOWER_THAN_MICROS: u64 = 1000;

/// One logged call.
#[derive(Debug, Clone)]
pub struct SlowCall {
    pub micros: u64,
    /// The command and its arguments (Redis keeps at most 32, each cut at 128 bytes).
    pub args: Vec<String>,
}

impl SlowCall {
    /// The first three arguments, each cut at 60 characters: enough to name a script call.
    pub fn head(&self) -> String {
        self.args
            .iter()
            .take(3)
            .map(|a| a.chars().take(60).collect::<String>())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Logs every call slower than 1 ms from now on, keeping the last `max_len`.
pub async fn watch(conn: &mut MultiplexedConnection, max_len: usize) -> redis::RedisResult<()> {
    redis::pipe()
        .cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(SLOWER_THAN_MICROS)
        .ignore()
        .cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(max_len)
        .ignore()
        .cmd("SLOWLOG")
        .arg("RESET")
        .ignore()
        .query_async(conn)
        .await
}

/// The calls logged since [`watch`], at most `max_len`, newest first.
pub async fn calls(
    conn: &mut MultiplexedConnection,
    max_len: usize,
) -> redis::RedisResult<Vec<SlowCall>> {
    // Each entry: id, time, duration (µs), arguments, client address, client name.
    let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(max_len)
        .query_async(conn)
        .await?;
    entries
        .into_iter()
        .map(|mut e| {
            let args = e
                .get_mut(3)
                .map(std::mem::take)
                .unwrap_or(redis::Value::Nil);
            let micros = e
                .get_mut(2)
                .map(std::mem::take)
                .unwrap_or(redis::Value::Nil);
            // Arguments may be binary (a compressed body in a `settle.lua` call): each
            // is read as text with its invalid bytes replaced, never dropped.
            let args: Vec<Vec<u8>> = redis::from_redis_value(args).unwrap_or_default();
            Ok(SlowCall {
                micros: redis::from_redis_value(micros)?,
                args: args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            })
        })
        .collect()
}

/// The longest call logged since [`watch`], if any was over 1 ms.
pub async fn slowest(
    conn: &mut MultiplexedConnection,
    max_len: usize,
) -> redis::RedisResult<Option<SlowCall>> {
    Ok(calls(conn, max_len)
        .await?
        .into_iter()
        .max_by_key(|c| c.micros))
}
