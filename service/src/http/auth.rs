//! Bearer tokens, by SHA-256, from three sources: the config (`auth.tokens`, fixed for the
//! process' life), a tokens file (`auth.tokens_file`) and the `api_token` table on the read
//! source (`auth.database`: ops-db's where it has one, else the service's own, see
//! `token_table`). The last two are read at start and again every
//! `auth.cache_ttl`; a failed read keeps the last good set, so a token keeps working
//! while its source is away (the replica down, the WAN cut: the table is read locally).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::config::{validate_tokens, Auth, Schema, Scope, Token, TokensFile};
use crate::ops::ApiError;
use crate::token_table;

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: it also scopes the client's idempotency keys.
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

type ByHash = HashMap<[u8; 32], Arc<Principal>>;

/// The accepted tokens, by hash.
pub struct Tokens {
    config: ByHash,
    file: ArcSwap<ByHash>,
    database: ArcSwap<ByHash>,
    file_path: Option<PathBuf>,
    use_database: bool,
    /// Where the token tables are (`schema.name`, `schema.domain`).
    schema: Schema,
    pub cache_ttl: Duration,
    /// Whether the last read of the file, of the table, failed: a failure is logged when it
    /// begins and when it ends, not at every `cache_ttl` of a days-long outage.
    file_failing: AtomicBool,
    table_failing: AtomicBool,
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
    /// The config's tokens only (until the first [`Tokens::refresh`]).
    pub fn new(auth: &Auth, schema: &Schema) -> Self {
        Self {
            config: by_hash(&auth.tokens, |_| None),
            file: ArcSwap::from_pointee(ByHash::new()),
            database: ArcSwap::from_pointee(ByHash::new()),
            file_path: auth.tokens_file.clone(),
            use_database: auth.database,
            schema: schema.clone(),
            cache_ttl: auth.cache_ttl,
            file_failing: AtomicBool::new(false),
            table_failing: AtomicBool::new(false),
        }
    }

    /// The token's owner, if `presented` is a valid token that has not expired.
    pub fn lookup(&self, presented: &str) -> Option<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let found = self
            .config
            .get(&digest)
            .cloned()
            .or_else(|| self.file.load().get(&digest).cloned())
            .or_else(|| self.database.load().get(&digest).cloned())?;
        match found.expires_at {
            Some(at) if at <= Utc::now() => None,
            _ => Some(found),
        }
    }

    /// Checks a presented token for `scope`: 401 without a valid one, 403 without the scope.
    pub fn check(&self, presented: Option<&str>, scope: Scope) -> Result<Arc<Principal>, ApiError> {
        let principal = presented
            .and_then(|t| self.lookup(t))
            .ok_or_else(ApiError::unauthorized)?;
        if principal.scopes.contains(&scope) {
            Ok(principal)
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// Whether `path` is a usable tokens file.
    pub fn check_file(path: &std::path::Path) -> anyhow::Result<()> {
        read_file(path).map(|_| ())
    }

    /// Reads the tokens file and the table again; a source that cannot be read keeps its
    /// last good set (and is logged).
    pub async fn refresh(&self, pool: Option<&PgPool>) {
        if let Some(path) = &self.file_path {
            let read = read_file(path);
            note(&self.file_failing, &read, "auth.tokens_file");
            if let Ok(tokens) = read {
                self.file.store(Arc::new(tokens));
            }
        }
        if let (true, Some(pool)) = (self.use_database, pool) {
            let read = read_table(pool, &self.schema).await;
            note(&self.table_failing, &read, "the api_token table");
            if let Ok(tokens) = read {
                self.database.store(Arc::new(tokens));
            }
        }
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

/// Logs a source's read failing (once, until it succeeds again) and recovering.
fn note(failing: &AtomicBool, read: &anyhow::Result<ByHash>, source: &str) {
    match read {
        Err(e) if !failing.swap(true, Ordering::Relaxed) => tracing::warn!(
            error = %e,
            "{source} could not be read; its last good tokens stay in use until it can"
        ),
        Ok(_) if failing.swap(false, Ordering::Relaxed) => {
            tracing::info!("{source} is read again; its tokens are current")
        }
        _ => {}
    }
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
mod tests {
    use super::*;

    fn auth(tokens: Vec<Token>) -> Auth {
        Auth {
            tokens,
            tokens_file: None,
            database: false,
            cache_ttl: Duration::from_secs(30),
        }
    }

    fn token(name: &str, secret: &str, scopes: Vec<Scope>) -> Token {
        Token {
            name: name.into(),
            sha256: crate::token::hash(secret),
            scopes,
        }
    }

    #[test]
    fn scopes_are_checked_and_expired_tokens_refused() {
        let tokens = Tokens::new(
            &auth(vec![token("w", "s1", vec![Scope::Write])]),
            &Schema::default(),
        );
        assert_eq!(
            tokens
                .check(Some("s1"), Scope::Write)
                .map(|p| p.name.clone()),
            Ok("w".into())
        );
        assert_eq!(
            tokens.check(Some("s1"), Scope::Read).unwrap_err().status,
            403
        );
        assert_eq!(
            tokens.check(Some("nope"), Scope::Write).unwrap_err().status,
            401
        );
        assert_eq!(tokens.check(None, Scope::Write).unwrap_err().status, 401);
        let expired = Principal {
            name: "old".into(),
            scopes: vec![Scope::Read],
            expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
        };
        let digest: [u8; 32] = Sha256::digest(b"s2").into();
        tokens
            .database
            .store(Arc::new(HashMap::from([(digest, Arc::new(expired))])));
        assert_eq!(
            tokens.check(Some("s2"), Scope::Read).unwrap_err().status,
            401
        );
    }

    #[tokio::test]
    async fn the_tokens_file_is_read_again_and_a_bad_read_keeps_the_last_set() {
        let dir = std::env::temp_dir().join(format!("opsdb-tokens-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tokens.toml");
        let line = |secret: &str| {
            format!(
                "tokens = [{{ name = \"f\", sha256 = \"{}\", scopes = [\"read\"] }}]\n",
                crate::token::hash(secret)
            )
        };
        std::fs::write(&path, line("first")).expect("write");
        let mut a = auth(Vec::new());
        a.tokens_file = Some(path.clone());
        let tokens = Tokens::new(&a, &Schema::default());
        assert!(
            tokens.lookup("first").is_none(),
            "not read before the first refresh"
        );
        tokens.refresh(None).await;
        assert!(tokens.lookup("first").is_some());
        std::fs::write(&path, line("second")).expect("write");
        tokens.refresh(None).await;
        assert!(
            tokens.lookup("first").is_none(),
            "a token removed from the file is gone"
        );
        assert!(tokens.lookup("second").is_some());
        std::fs::write(&path, "tokens = [ broken").expect("write");
        tokens.refresh(None).await;
        assert!(
            tokens.lookup("second").is_some(),
            "a bad file keeps the last set"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
