//! Opening a Redis connection: the one place that bounds both the connect and every reply,
//! so no actor waits on a Redis that does not answer.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};

/// A multiplexed connection from `client`, connecting within `connect` and failing any
/// command not answered within `reply`.
pub async fn open(
    client: &redis::Client,
    connect: Duration,
    reply: Duration,
) -> RedisResult<MultiplexedConnection> {
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(reply));
    client
        .get_multiplexed_async_connection_with_config(&settings)
        .await
}

/// As [`open`], from a URL.
pub async fn open_url(
    url: &str,
    connect: Duration,
    reply: Duration,
) -> RedisResult<MultiplexedConnection> {
    open(&redis::Client::open(url)?, connect, reply).await
}
