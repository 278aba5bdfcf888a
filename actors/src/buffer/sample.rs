//! The BufferActor's periodic read of Redis (every [`SAMPLE_INTERVAL`], on a connection of
//! its own): memory (`INFO memory`, see `memory.rs`) and disk (`INFO persistence`,
//! `CONFIG GET dir` and the free space of that directory, see `storage.rs`), in one round
//! trip. Nothing here runs per write.
//!
//! [`SAMPLE_INTERVAL`]: super::memory::SAMPLE_INTERVAL

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::RedisResult;

use super::memory::Sample;
use super::storage::{self, Storage};

/// What one sample read: memory, and disk when Redis told.
type Sampled = (Option<Sample>, Option<Storage>);

/// Reads Redis' memory and disk on `conn` (connecting first if there is none); the
/// connection comes back if it is still good.
pub(super) async fn sample(
    client: &redis::Client,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
) -> (Option<MultiplexedConnection>, RedisResult<Sampled>) {
    let read = async {
        let mut conn = match conn {
            Some(conn) => conn,
            None => crate::redis_conn::open(client, "buffer-sample", timeout, timeout).await?,
        };
        // CONFIG may be renamed away on a hardened server: then the free space is unknown.
        let replies: Vec<RedisResult<redis::Value>> = redis::pipe()
            .ignore_errors()
            .cmd("INFO")
            .arg("memory")
            .cmd("INFO")
            .arg("persistence")
            .cmd("CONFIG")
            .arg("GET")
            .arg("dir")
            .query_async(&mut conn)
            .await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().and_then(Result::ok);
        let text = |v: Option<redis::Value>| {
            v.and_then(|v| redis::from_redis_value::<String>(v).ok())
                .unwrap_or_default()
        };
        let memory = text(next());
        let persistence = text(next());
        let dir = next()
            .and_then(|v| redis::from_redis_value::<Vec<String>>(v).ok())
            .and_then(|pair| pair.into_iter().nth(1));
        let free = dir.as_deref().and_then(storage::free_bytes);
        let sampled = (Sample::parse(&memory), Storage::parse(&persistence, free));
        Ok::<_, redis::RedisError>((conn, sampled))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok((conn, sample))) => (Some(conn), Ok(sample)),
        Ok(Err(err)) => (None, Err(err)),
        Err(_) => (
            None,
            Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        ),
    }
}
