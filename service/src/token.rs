//! API tokens: random bearer secrets, of which only the SHA-256 is configured.

use anyhow::Context as _;
use ops_db_actors::pg::PgTarget;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::config::{Schema, Scope};
use crate::token_table;

/// A new token: `opsdb_` and 32 random bytes in hex.
pub fn generate() -> String {
    format!("opsdb_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What goes into `auth.tokens[].sha256`.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `ops-db-api token create`: a new token in the service's own `api_token` table on the
/// primary (through the schema owner's URL), replicated from there to every site. Refused
/// where ops-db has its own `api_token`: tokens are then ops-db's to issue. Returns the
/// token: the only time it is ever shown.
pub async fn create(
    target: &PgTarget,
    schema: &Schema,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<String> {
    if name.is_empty() || scopes.is_empty() {
        anyhow::bail!("a token needs a name and at least one scope");
    }
    let mut conn = crate::db::connect(target).await?;
    own_table_only(&mut conn, schema).await?;
    let secret = generate();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".api_token (sha256, name, scopes, expires_at) VALUES ($1, $2, $3, $4)",
        schema.name
    ))
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
/// change has replicated and each service's cache has expired (`auth.cache_ttl`). Refused
/// where ops-db has its own `api_token`. Returns how many were revoked.
pub async fn revoke(target: &PgTarget, schema: &Schema, name: &str) -> anyhow::Result<u64> {
    let mut conn = crate::db::connect(target).await?;
    own_table_only(&mut conn, schema).await?;
    let done = sqlx::query(&format!(
        "UPDATE \"{}\".api_token SET active = false WHERE name = $1 AND active",
        schema.name
    ))
    .bind(name)
    .execute(&mut conn)
    .await
    .context("updating api_token")?;
    Ok(done.rows_affected())
}

/// An error when ops-db's own `api_token` is there: the service reads that one, so a token
/// written to its own table would never be accepted.
async fn own_table_only(conn: &mut PgConnection, schema: &Schema) -> anyhow::Result<()> {
    let source = token_table::source(&mut *conn, schema)
        .await
        .context("looking for ops-db's api_token")?;
    if let token_table::Source::OpsDb { .. } = source {
        anyhow::bail!(
            "{}.api_token is ops-db's token table: tokens are issued and revoked by ops-db \
             there, and the service reads them from it",
            schema.domain
        );
    }
    Ok(())
}
