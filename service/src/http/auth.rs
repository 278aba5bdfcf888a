//! Bearer tokens, by SHA-256, from three sources: the config (`auth.tokens`, fixed for the
//! process' life), a tokens file (`auth.tokens_file`) and the `api_token` table on the read
//! source (`auth.database`: ops-db's where it has one, else the service's own, see
//! `token_table`). The last two are read at start and again every
//! `auth.cache_ttl`; a failed read keeps the last good set, so a token keeps working
//! while its source is away (the replica down, the WAN cut: the table is read locally).
//!
//! Each last good set is also kept in the site's Redis (`token_store`) and loaded at start,
//! before any read: a restart while the replica is down keeps the table's tokens. While a
//! configured source has neither been read since start nor had a stored copy, a token no
//! source knows gets `503 token_source_unavailable` (with `Retry-After`), not `401`: the
//! service cannot tell yet whether it is valid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::token_source::{Source, Status};
use super::AppState;
use crate::config::{validate_tokens, Auth, Schema, Scope, Token, TokensFile};
use crate::ops::{ApiError, Stored};
use crate::token_store::{TokenStore, Which};
use crate::token_table;

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: it also scopes the client's idempotency keys.
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub(super) type ByHash = HashMap<[u8; 32], Arc<Principal>>;

/// The accepted tokens, by hash.
pub struct Tokens {
    config: ByHash,
    file: Source,
    database: Source,
    file_path: Option<PathBuf>,
    use_database: bool,
    /// Whether there is a read source to read the table on (`auth.database` alone is not
    /// enough).
    read_source: bool,
    /// Where the token tables are (`schema.name`, `schema.domain`).
    schema: Schema,
    pub cache_ttl: Duration,
    /// Where the last good sets are kept; `None` in unit tests.
    store: Option<TokenStore>,
}

/// What `/health` shows of the token sources: each configured one's [`Status`] (`null`:
/// not configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokensHealth {
    pub file: Option<Status>,
    pub table: Option<Status>,
}

fn by_hash(tokens: &[Token], expires_at: impl Fn(&Token) -> Option<DateTime<Utc>>) -> ByHash {
    tokens
        .iter()
        .filter_map(|t| {
            let bytes: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
            let principal = Principal {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
                expires_at: expires_at(t),
            };
            Some((bytes, Arc::new(principal)))
        })
        .collect()
}

impl Tokens {
    /// The config's tokens only (until [`Tokens::load_stored`] and the first
    /// [`Tokens::refresh`]). `read_source`: whether the table can be read at all.
    pub fn new(auth: &Auth, schema: &Schema, read_source: bool) -> Self {
        Self {
            config: by_hash(&auth.tokens, |_| None),
            file: Source::new(Which::File, "auth.tokens_file"),
            database: Source::new(Which::Table, "the api_token table"),
            file_path: auth.tokens_file.clone(),
            use_database: auth.database,
            read_source,
            schema: schema.clone(),
            cache_ttl: auth.cache_ttl,
            store: None,
        }
    }

    /// Keeps the last good sets in `store`.
    pub fn with_store(mut self, store: TokenStore) -> Self {
        self.store = Some(store);
        self
    }

    fn file_configured(&self) -> bool {
        self.file_path.is_some()
    }

    fn table_configured(&self) -> bool {
        self.use_database && self.read_source
    }

    /// At start, before the first read: each configured source's stored copy, if any.
    pub async fn load_stored(&self) {
        let Some(store) = &self.store else { return };
        if self.file_configured() {
            self.file.load(store).await;
        }
        if self.table_configured() {
            self.database.load(store).await;
        }
    }

    /// Whether the tokens file has a set (read, or its stored copy).
    pub fn file_known(&self) -> bool {
        self.file.settled()
    }

    /// Whether a configured source has no set yet (neither read nor a stored copy).
    fn unsettled(&self) -> bool {
        (self.file_configured() && !self.file.settled())
            || (self.table_configured() && !self.database.settled())
    }

    /// Each configured source's state, for `/health`.
    pub fn health(&self) -> TokensHealth {
        TokensHealth {
            file: self.file_configured().then(|| self.file.status()),
            table: self.table_configured().then(|| self.database.status()),
        }
    }

    /// The token's owner, if `presented` is a valid token that has not expired.
    pub fn lookup(&self, presented: &str) -> Option<Arc<Principal>> {
        self.find(presented).filter(not_expired)
    }

    /// The owner of `presented` in any source, expired or not.
    fn find(&self, presented: &str) -> Option<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.config
            .get(&digest)
            .cloned()
            .or_else(|| self.file.set.load().get(&digest).cloned())
            .or_else(|| self.database.set.load().get(&digest).cloned())
    }

    /// 503: a token no source knows while a source is not known yet.
    fn source_unavailable(&self) -> ApiError {
        ApiError {
            retry_after: Some(self.cache_ttl.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_source_unavailable",
                "the service cannot check this token yet (a token source has not been read since it started); retry later",
            )
        }
    }

    /// Checks a presented token for `scope`: 401 without a valid one, 403 without the scope,
    /// 503 for one no source knows while a configured source is not known yet.
    pub fn check(&self, presented: Option<&str>, scope: Scope) -> Result<Arc<Principal>, ApiError> {
        let presented = presented.ok_or_else(ApiError::unauthorized)?;
        let principal = match self.find(presented) {
            Some(p) if not_expired(&p) => p,
            Some(_) => return Err(ApiError::unauthorized()),
            // Refused before anything was handed to ingest: for a write, nothing stored.
            None if self.unsettled() && scope == Scope::Write => {
                return Err(self.source_unavailable().with_stored(Stored::No))
            }
            None if self.unsettled() => return Err(self.source_unavailable()),
            None => return Err(ApiError::unauthorized()),
        };
        if principal.scopes.contains(&scope) {
            Ok(principal)
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// Reads the tokens file again, if one is configured; the read's error, if it failed
    /// (the last good set stays in use, and the failure is logged when it starts).
    pub async fn refresh_file(&self) -> Option<anyhow::Error> {
        let path = self.file_path.as_ref()?;
        let read = read_file(path);
        let error = read.as_ref().err().map(|e| anyhow::anyhow!("{e:#}"));
        self.file.record(read, self.store.as_ref()).await;
        error
    }

    /// Reads the table again, if the database is a token source.
    pub async fn refresh_table(&self, pool: Option<&PgPool>) {
        if let (true, Some(pool)) = (self.use_database, pool) {
            let read = read_table(pool, &self.schema).await;
            self.database.record(read, self.store.as_ref()).await;
        }
    }

    /// Reads the tokens file and the table again; a source that cannot be read keeps its
    /// last good set (and is logged); a good read that differs from the stored copy is
    /// stored.
    pub async fn refresh(&self, pool: Option<&PgPool>) {
        self.refresh_file().await;
        self.refresh_table(pool).await;
    }

    /// Refreshes every `cache_ttl` until `stop`.
    pub async fn refresh_until(self: Arc<Self>, pool: Option<PgPool>, stop: CancellationToken) {
        if self.file_path.is_none() && !(self.use_database && pool.is_some()) {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.cache_ttl) => {}
            }
            self.refresh(pool.as_ref()).await;
        }
    }
}

fn not_expired(principal: &Arc<Principal>) -> bool {
    principal.expires_at.is_none_or(|at| at > Utc::now())
}

fn read_file(path: &std::path::Path) -> anyhow::Result<ByHash> {
    let text = std::fs::read_to_string(path)?;
    let file: TokensFile = toml_from_str(&text)?;
    validate_tokens("auth.tokens_file", &file.tokens)?;
    Ok(by_hash(&file.tokens, |_| None))
}

fn toml_from_str(text: &str) -> anyhow::Result<TokensFile> {
    use figment::providers::{Format, Toml};
    Ok(figment::Figment::from(Toml::string(text)).extract()?)
}

/// Bounds one read of the table, so a hung read source does not hold the refresh.
const TABLE_TIMEOUT: Duration = Duration::from_secs(5);

async fn read_table(pool: &PgPool, schema: &Schema) -> anyhow::Result<ByHash> {
    let read = async {
        let source = token_table::source(pool, schema).await?;
        token_table::read(pool, source, schema).await
    };
    let rows = tokio::time::timeout(TABLE_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TABLE_TIMEOUT:?}"))??;
    let mut tokens = ByHash::new();
    for token_table::Row {
        sha256,
        name,
        scopes,
        expires_at,
    } in rows
    {
        let Some(bytes) = hex::decode(&sha256)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            continue;
        };
        let principal = Principal {
            name,
            scopes,
            expires_at,
        };
        tokens.insert(bytes, Arc::new(principal));
    }
    Ok(tokens)
}

fn bearer(request: &Request) -> Option<&str> {
    bearer_header(request.headers())
}

/// The token of an `Authorization: Bearer …` header.
pub(super) fn bearer_header(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the request's token for `scope` and hands its [`Principal`] to the handler (as a
/// request extension: the write handler scopes idempotency keys by it).
async fn require(
    state: &AppState,
    scope: Scope,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = state.tokens.check(bearer(&request), scope)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

pub async fn require_write(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Write, request, next).await
}

pub async fn require_read(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Read, request, next).await
}

pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Admin, request, next).await
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
