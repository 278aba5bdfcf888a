//! Bearer tokens, checked against the SHA-256 hashes in the config.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::config::{Scope, Token};
use crate::ops::ApiError;

/// The accepted tokens, by hash.
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Token>,
}

impl Tokens {
    pub fn new(tokens: &[Token]) -> Self {
        let by_hash = tokens
            .iter()
            .filter_map(|t| {
                let bytes: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                Some((bytes, t.clone()))
            })
            .collect();
        Self { by_hash }
    }

    /// The token's entry, if `presented` is one of ours.
    pub fn lookup(&self, presented: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_hash.get(&digest)
    }

    /// Any valid token (reads).
    pub fn check_any(&self, presented: Option<&str>) -> Result<&Token, ApiError> {
        presented
            .and_then(|t| self.lookup(t))
            .ok_or_else(ApiError::unauthorized)
    }

    /// Checks a raw `Authorization` value (or a bare token) for `scope`.
    pub fn check(&self, presented: Option<&str>, scope: Scope) -> Result<&Token, ApiError> {
        let token = presented
            .and_then(|t| self.lookup(t))
            .ok_or_else(ApiError::unauthorized)?;
        if token.scopes.contains(&scope) {
            Ok(token)
        } else {
            Err(ApiError::forbidden())
        }
    }
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

async fn require(
    state: &AppState,
    scope: Scope,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.tokens.check(bearer(&request), scope)?;
    Ok(next.run(request).await)
}

pub async fn require_write(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Write, request, next).await
}

pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, Scope::Admin, request, next).await
}

pub async fn require_any(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.tokens.check_any(bearer(&request))?;
    Ok(next.run(request).await)
}
