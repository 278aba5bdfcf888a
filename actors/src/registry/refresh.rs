//! Keeping the registry: the stored copy at start, then the read source every `every`.
//!
//! Guarantees:
//! - at start the last good copy is loaded from Redis (`Keys::registry`) before the read
//!   source is asked, so a service restarted while its replica is down validates writes
//!   with the shape it last knew;
//! - a stored copy is used only for the tables and schema the config lists now;
//! - the stored copy is written only when a read differs from it (its tables: `read_at`
//!   alone is no change), so a quiet year costs no Redis writes; one key, its size that of
//!   the listed tables' columns;
//! - every Redis call is bounded (`redis_timeout`), and so is every read (`read.rs`).

use std::future::Future;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use super::read::read;
use super::{Handle, Registry};
use crate::overlay::Keys;
use crate::redis_conn;

/// What the refresher reads and where it keeps the copy.
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// The read source (the replica; the primary on the main site). `None`: nothing to
    /// read, the stored copy (if any) is all there is.
    pub source: Option<PgPool>,
    pub redis_url: String,
    pub keys: Keys,
    /// `schema.domain`.
    pub domain: String,
    /// `schema.tables`.
    pub tables: Vec<String>,
    /// `schema.refresh`.
    pub every: Duration,
    pub redis_timeout: Duration,
}

/// Why the stored copy could not be loaded or written.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the stored copy is not a registry: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the registry into its [`Handle`] and keeps the stored copy.
pub struct Refresher {
    config: RefreshConfig,
    handle: Handle,
    redis: Option<MultiplexedConnection>,
    /// What Redis holds, as far as this refresher knows (`None`: unknown or nothing).
    stored: Option<Registry>,
    /// Whether the last write of the stored copy failed (logged once per failure).
    store_failing: bool,
}

impl Refresher {
    pub fn new(config: RefreshConfig, handle: Handle) -> Self {
        Self {
            config,
            handle,
            redis: None,
            stored: None,
            store_failing: false,
        }
    }

    /// At start: the stored copy, then one read of the source.
    pub async fn start(&mut self) {
        match self.load().await {
            Ok(Some(stored)) => {
                self.handle.stored_copy(self.restrict(&stored));
                self.stored = Some(stored);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the model registry's stored copy could not be loaded")
            }
        }
        self.refresh().await;
    }

    /// Reads the source once; stores the result if it changed. Without a source, nothing.
    pub async fn refresh(&mut self) {
        let Some(source) = &self.config.source else {
            return;
        };
        match read(source, &self.config.domain, &self.config.tables).await {
            Ok(read) => {
                let changed = self
                    .stored
                    .as_ref()
                    .is_none_or(|s| s.tables != read.registry.tables);
                let registry = read.registry.clone();
                self.handle.read(read);
                if changed {
                    self.store(registry).await;
                }
            }
            Err(e) => self.handle.failed(e.to_string()),
        }
    }

    /// Refreshes every `every` until `stop` completes.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        if self.config.source.is_none() {
            return;
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.every) => {}
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = self.refresh() => {}
            }
        }
    }

    /// The stored copy without the tables the config no longer lists (or lists in another
    /// schema).
    fn restrict(&self, stored: &Registry) -> Registry {
        let mut registry = stored.clone();
        registry.tables.retain(|name, model| {
            model.schema == self.config.domain && self.config.tables.contains(name)
        });
        registry
    }

    async fn load(&mut self) -> Result<Option<Registry>, StoreError> {
        let key = self.config.keys.registry();
        let json: Option<String> = self.call(redis::cmd("GET").arg(key)).await?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    async fn store(&mut self, registry: Registry) {
        let written = match serde_json::to_string(&registry) {
            Ok(json) => {
                let key = self.config.keys.registry();
                self.call::<()>(redis::cmd("SET").arg(key).arg(json))
                    .await
                    .map_err(StoreError::from)
            }
            Err(e) => Err(e.into()),
        };
        match written {
            Ok(()) => {
                if std::mem::take(&mut self.store_failing) {
                    tracing::info!("the model registry's stored copy is written again");
                }
                self.stored = Some(registry);
            }
            Err(e) if !self.store_failing => {
                self.store_failing = true;
                tracing::warn!(error = %e, "the model registry's stored copy could not be written; trying again at the next refresh");
            }
            Err(_) => {}
        }
    }

    /// One command on the refresher's connection, opened if needed and dropped on error.
    async fn call<T: redis::FromRedisValue>(
        &mut self,
        cmd: &mut redis::Cmd,
    ) -> Result<T, redis::RedisError> {
        let timeout = self.config.redis_timeout;
        let conn = match &mut self.redis {
            Some(conn) => conn,
            None => self.redis.insert(
                redis_conn::open_url(&self.config.redis_url, "registry", timeout, timeout).await?,
            ),
        };
        let answer = cmd.query_async(conn).await;
        if answer.is_err() {
            self.redis = None;
        }
        answer
    }
}
