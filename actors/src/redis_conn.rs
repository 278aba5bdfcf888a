//! Opening a Redis connection: the one place that bounds both the connect and every reply,
//! so no actor waits on a Redis that does not answer, and that names each connection by
//! its role (`CLIENT SETNAME opsdb-api:buffer`, ...): `CLIENT LIST`, `ACL LOG` and the
//! slow log's client column say which part of the service a connection is.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};

/// A multiplexed connection from `client`, connecting within `connect` and failing any
/// command not answered within `reply`, named `opsdb-api:<role>`.
pub async fn open(
    client: &redis::Client,
    role: &str,
    connect: Duration,
    reply: Duration,
) -> RedisResult<MultiplexedConnection> {
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(reply));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&settings)
        .await?;
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name(role))
        .query_async(&mut conn)
        .await?;
    Ok(conn)
}

/// As [`open`], from a URL.
pub async fn open_url(
    url: &str,
    role: &str,
    connect: Duration,
    reply: Duration,
) -> RedisResult<MultiplexedConnection> {
    open(&redis::Client::open(url)?, role, connect, reply).await
}

/// The name a connection of `role` has in `CLIENT LIST`.
pub fn name(role: &str) -> String {
    format!("opsdb-api:{role}")
}
