//! Health's view of Redis, over its own connection: a slow or broken health check never
//! shares a connection or a queue with ingestion.

use std::time::Duration;

use ops_db_actors::overlay::Keys;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use serde::Serialize;
use tokio::sync::Mutex;

pub struct RedisProbe {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    timeout: Duration,
}

/// Whether acknowledged writes survive a Redis crash or power loss.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Durability {
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
    /// `appendonly yes` with `appendfsync always`: every acknowledged write is on disk.
    pub durable: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedisStatus {
    pub reachable: bool,
    pub durability: Durability,
    /// Transactions buffered and not yet forwarded.
    pub buffered: Option<u64>,
    pub dead_letters: Option<u64>,
    /// Age of the oldest transaction not yet forwarded (from its stream id's time).
    pub oldest_unforwarded_secs: Option<f64>,
}

impl RedisProbe {
    pub fn new(url: &str, keys: Keys, timeout: Duration) -> RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: Mutex::new(None),
            keys,
            timeout,
        })
    }

    pub async fn status(&self) -> RedisStatus {
        match tokio::time::timeout(self.timeout, self.query()).await {
            Ok(Ok(status)) => status,
            _ => {
                *self.conn.lock().await = None;
                RedisStatus {
                    reachable: false,
                    durability: Durability {
                        appendonly: None,
                        appendfsync: None,
                        durable: false,
                    },
                    buffered: None,
                    dead_letters: None,
                    oldest_unforwarded_secs: None,
                }
            }
        }
    }

    /// A connection for admin work (dead letters): not the ingest path's.
    pub async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(guard.insert(conn).clone())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn query(&self) -> RedisResult<RedisStatus> {
        let mut conn = self.conn().await?;
        let conn = &mut conn;
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("PING")
            .cmd("XLEN")
            .arg(self.keys.stream())
            .cmd("XLEN")
            .arg(self.keys.dead_letters())
            .cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .cmd("XRANGE")
            .arg(self.keys.stream())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let replies: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().and_then(Result::ok);
        let _ping = next();
        let buffered = next().and_then(|v| redis::from_redis_value::<u64>(v).ok());
        let dead_letters = next().and_then(|v| redis::from_redis_value::<u64>(v).ok());
        // CONFIG may be renamed away on a hardened server: then durability is unknown.
        let config = |v: Option<Value>| {
            v.and_then(|v| redis::from_redis_value::<Vec<String>>(v).ok())
                .and_then(|pair| pair.into_iter().nth(1))
        };
        let appendonly = config(next());
        let appendfsync = config(next());
        let oldest = next()
            .and_then(|v| redis::from_redis_value::<redis::streams::StreamRangeReply>(v).ok())
            .and_then(|r| r.ids.into_iter().next())
            .and_then(|e| e.id.split('-').next().and_then(|ms| ms.parse::<i64>().ok()));
        let oldest_unforwarded_secs = match (buffered, oldest) {
            (Some(0), _) => Some(0.0),
            (_, Some(ms)) => {
                Some(((chrono::Utc::now().timestamp_millis() - ms).max(0)) as f64 / 1000.0)
            }
            _ => None,
        };
        let durable =
            appendonly.as_deref() == Some("yes") && appendfsync.as_deref() == Some("always");
        Ok(RedisStatus {
            reachable: true,
            durability: Durability {
                appendonly,
                appendfsync,
                durable,
            },
            buffered,
            dead_letters,
            oldest_unforwarded_secs,
        })
    }
}
