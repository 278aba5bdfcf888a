//! API tokens: random bearer secrets, of which only the SHA-256 is configured.

use sha2::{Digest, Sha256};

/// A new token: `opsdb_` and 32 random bytes in hex.
pub fn generate() -> String {
    format!("opsdb_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What goes into `auth.tokens[].sha256`.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `ops-db-api token create`: a new token in the primary's `api_token` table (through the
/// schema owner's URL), replicated from there to every site. Returns the token: the only
/// time it is ever shown.
pub async fn create(
    target: &ops_db_actors::pg::PgTarget,
    name: &str,
    scopes: &[crate::config::Scope],
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if name.is_empty() || scopes.is_empty() {
        anyhow::bail!("a token needs a name and at least one scope");
    }
    let secret = generate();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    let mut conn = crate::db::connect(target).await?;
    sqlx::query("INSERT INTO api_token (sha256, name, scopes, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(hash(&secret))
        .bind(name)
        .bind(&scopes)
        .bind(expires_at)
        .execute(&mut conn)
        .await
        .context("inserting into api_token (is the schema migrated?)")?;
    Ok(secret)
}

/// `ops-db-api token revoke`: every active token named `name` stops working once the
/// change has replicated and each service's cache has expired (`auth.cache_ttl`). Returns
/// how many were revoked.
pub async fn revoke(target: &ops_db_actors::pg::PgTarget, name: &str) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let mut conn = crate::db::connect(target).await?;
    let done = sqlx::query("UPDATE api_token SET active = false WHERE name = $1 AND active")
        .bind(name)
        .execute(&mut conn)
        .await
        .context("updating api_token")?;
    Ok(done.rows_affected())
}
