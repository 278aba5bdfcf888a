//! One token source that is read again and again (the tokens file, the `api_token` table):
//! its last good set, where that set came from, and its stored copy (`token_store`).
//!
//! Guarantees:
//! - the set in use is the last good read, else the stored copy loaded at start, else empty
//!   ([`Origin::None`]: the caller answers 503 for tokens it cannot place, see `auth.rs`);
//! - a failed read keeps the set in use; it is logged when the failure begins and ends;
//! - the stored copy is written only when a good read differs from it, and a failed write
//!   is tried again at the next good read (logged once until it succeeds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{ByHash, Principal};
use crate::token_store::{StoredToken, TokenStore, Which};

/// Where the set in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = TokenOrigin)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Neither read since start nor loaded from a stored copy: the set is empty.
    None,
    /// The stored copy of an earlier run: the source has not been read since start.
    StoredCopy,
    /// A read of the source since start.
    Read,
}

/// What `/health` shows of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = TokenSourceStatus)]
pub struct Status {
    pub source: Origin,
    /// When the source was last read successfully (this run).
    pub read_at: Option<DateTime<Utc>>,
    /// Why the last read failed, while it fails.
    pub last_error: Option<String>,
}

pub struct Source {
    which: Which,
    /// Where the log lines say the tokens come from.
    label: &'static str,
    pub set: ArcSwap<ByHash>,
    status: Mutex<Status>,
    /// The copy in Redis as last loaded or written, to write only what differs.
    stored: tokio::sync::Mutex<Option<Vec<StoredToken>>>,
    store_failing: AtomicBool,
}

impl Source {
    pub fn new(which: Which, label: &'static str) -> Self {
        Self {
            which,
            label,
            set: ArcSwap::from_pointee(ByHash::new()),
            status: Mutex::new(Status {
                source: Origin::None,
                read_at: None,
                last_error: None,
            }),
            stored: tokio::sync::Mutex::new(None),
            store_failing: AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a set is known (read, or a stored copy).
    pub fn settled(&self) -> bool {
        self.status().source != Origin::None
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// At start, before any read: the stored copy, if there is one.
    pub async fn load(&self, store: &TokenStore) {
        match store.load(self.which).await {
            Ok(Some(tokens)) => {
                self.set.store(Arc::new(from_stored(&tokens)));
                self.update(|s| s.source = Origin::StoredCopy);
                tracing::info!(
                    tokens = tokens.len(),
                    "{}: its stored copy is in use until it is read",
                    self.label
                );
                *self.stored.lock().await = Some(tokens);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "{}: its stored copy could not be loaded", self.label)
            }
        }
    }

    /// Takes the result of one read: a good one replaces the set (and the stored copy if it
    /// differs), a failed one keeps it.
    pub async fn record(&self, read: anyhow::Result<ByHash>, store: Option<&TokenStore>) {
        let set = match read {
            Ok(set) => set,
            Err(e) => {
                let began = self.status().last_error.is_none();
                self.update(|s| s.last_error = Some(format!("{e:#}")));
                if began {
                    tracing::warn!(error = %e, "{} could not be read; its last good tokens stay in use until it can", self.label);
                }
                return;
            }
        };
        let tokens = to_stored(&set);
        self.set.store(Arc::new(set));
        let recovered = self.status().last_error.is_some();
        self.update(|s| {
            s.source = Origin::Read;
            s.read_at = Some(Utc::now());
            s.last_error = None;
        });
        if recovered {
            tracing::info!("{} is read again; its tokens are current", self.label);
        }
        if let Some(store) = store {
            self.keep(store, tokens).await;
        }
    }

    /// Writes `tokens` as the stored copy unless it holds them already.
    async fn keep(&self, store: &TokenStore, tokens: Vec<StoredToken>) {
        let mut stored = self.stored.lock().await;
        if stored.as_ref() == Some(&tokens) {
            return;
        }
        match store.store(self.which, &tokens).await {
            Ok(()) => {
                *stored = Some(tokens);
                if self.store_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("{}: its stored copy is written again", self.label);
                }
            }
            Err(e) if !self.store_failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                error = %e,
                "{}: its stored copy could not be written; trying again at the next read",
                self.label
            ),
            Err(_) => {}
        }
    }
}

/// A set as its copy holds it, sorted by hash.
fn to_stored(set: &ByHash) -> Vec<StoredToken> {
    let mut tokens: Vec<StoredToken> = set
        .iter()
        .map(|(hash, p)| StoredToken {
            name: p.name.clone(),
            sha256: hex::encode(hash),
            scopes: p.scopes.clone(),
            expires_at: p.expires_at,
        })
        .collect();
    tokens.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    tokens
}

/// A stored copy as a set (entries whose hash is not 32 bytes of hex are skipped).
fn from_stored(tokens: &[StoredToken]) -> ByHash {
    tokens
        .iter()
        .filter_map(|t| {
            let hash: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
            let principal = Principal {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
                expires_at: t.expires_at,
            };
            Some((hash, Arc::new(principal)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scope;

    #[test]
    fn a_set_survives_its_copy_and_compares_equal_after() {
        let mut set = ByHash::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let principal = Principal {
                name: name.into(),
                scopes: vec![Scope::Read],
                expires_at: (i == 1).then(Utc::now),
            };
            set.insert([i as u8; 32], Arc::new(principal));
        }
        let copy = to_stored(&set);
        assert!(copy.windows(2).all(|w| w[0].sha256 < w[1].sha256));
        let back = from_stored(&copy);
        assert_eq!(back, set);
        assert_eq!(to_stored(&back), copy, "read again: equal, so not written");
    }
}
