//! The stored copy of each token source's last good set, in the site's Redis (and so in its
//! AOF): `Keys::tokens_file` and `Keys::tokens_table`, JSON of [`StoredToken`]s.
//!
//! Guarantees:
//! - a copy holds only what a check needs: each token's name, hex SHA-256, scopes and
//!   expiry (never a secret: only hashes are ever known);
//! - the tokens are sorted by hash, so a set read again compares equal to its copy and the
//!   copy is written only when a read's result differs from it (`auth.rs`);
//! - every Redis call is bounded by `redis.timeout`; a failure is the caller's to log, and
//!   never stops the service (the sets in memory stay in use).

use std::time::Duration;

use chrono::{DateTime, Utc};
use ops_db_actors::overlay::Keys;
use ops_db_actors::redis_conn;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::Scope;

/// Which source a copy is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `auth.tokens_file`.
    File,
    /// The `api_token` table on the read source.
    Table,
}

impl Which {
    fn key(self, keys: &Keys) -> String {
        match self {
            Self::File => keys.tokens_file(),
            Self::Table => keys.tokens_table(),
        }
    }
}

/// One token as its copy holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub name: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a copy could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the stored copy is not a token set: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The stored copies of one site.
pub struct TokenStore {
    redis_url: String,
    keys: Keys,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl TokenStore {
    pub fn new(redis_url: String, keys: Keys, timeout: Duration) -> Self {
        Self {
            redis_url,
            keys,
            timeout,
            conn: Mutex::new(None),
        }
    }

    /// The copy of `which`, if one was ever written.
    pub async fn load(&self, which: Which) -> Result<Option<Vec<StoredToken>>, StoreError> {
        let json: Option<String> = self
            .call(redis::cmd("GET").arg(which.key(&self.keys)))
            .await?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Replaces the copy of `which` with `tokens`.
    pub async fn store(&self, which: Which, tokens: &[StoredToken]) -> Result<(), StoreError> {
        let json = serde_json::to_string(tokens)?;
        self.call::<()>(redis::cmd("SET").arg(which.key(&self.keys)).arg(json))
            .await?;
        Ok(())
    }

    /// One bounded call, on a connection opened on first use and dropped after a failure.
    async fn call<T: redis::FromRedisValue>(
        &self,
        cmd: &mut redis::Cmd,
    ) -> Result<T, redis::RedisError> {
        let mut guard = self.conn.lock().await;
        let conn = match &mut *guard {
            Some(conn) => conn,
            None => guard.insert(
                redis_conn::open_url(&self.redis_url, "tokens", self.timeout, self.timeout).await?,
            ),
        };
        let result = cmd.query_async(conn).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }
}
