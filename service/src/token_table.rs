//! Where API tokens are kept in the database: ops-db's own `api_token` (in `schema.domain`)
//! where it exists with ops-db's columns, else the service's `api_token` (in
//! `schema.name`, made by `migrate`). Decided at every read by one catalog query, so a site
//! whose ops-db gains its table switches over without a restart.
//!
//! ops-db's shape: `token_hash` (hex SHA-256 of the token), `is_active`, `expires_at`
//! (with or without time zone; without is taken as UTC), `scopes` (a `text[]` or a JSON
//! array; only `write`, `read` and `admin` mean anything here, others are ignored) and
//! `name`. Its other columns (`user_id`, …) are not read.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::config::{Schema, Scope};

/// One active token as a table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Hex SHA-256 of the token (either case).
    pub sha256: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Which table holds the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// ops-db's `<domain>.api_token`; `naive_expiry`: its `expires_at` has no time zone.
    OpsDb { naive_expiry: bool },
    /// The service's own `<name>.api_token`.
    Own,
}

/// The columns that make an `api_token` ops-db's.
const OPS_DB_COLUMNS: [&str; 5] = ["token_hash", "is_active", "expires_at", "scopes", "name"];

/// Whether `<domain>.api_token` exists with ops-db's columns: one catalog query.
pub async fn source<'c>(conn: impl PgExecutor<'c>, schema: &Schema) -> sqlx::Result<Source> {
    let (found, expiry): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), max(pg_catalog.format_type(a.atttypid, NULL)) \
                FILTER (WHERE a.attname = 'expires_at') \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
         WHERE s.nspname = $1 AND c.relname = 'api_token' AND c.relkind IN ('r', 'p', 'v') \
           AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY ($2)",
    )
    .bind(&schema.domain)
    .bind(OPS_DB_COLUMNS)
    .fetch_one(conn)
    .await?;
    Ok(if found == OPS_DB_COLUMNS.len() as i64 {
        Source::OpsDb {
            naive_expiry: expiry.as_deref() == Some("timestamp without time zone"),
        }
    } else {
        Source::Own
    })
}

/// The query reading the active tokens of `source`: (hash, name, scopes as JSON, expiry).
fn query(source: Source, schema: &Schema) -> String {
    match source {
        Source::OpsDb { naive_expiry } => {
            let expiry = if naive_expiry {
                "expires_at AT TIME ZONE 'UTC'"
            } else {
                "expires_at::timestamptz"
            };
            format!(
                "SELECT token_hash::text, name::text, to_jsonb(scopes), {expiry} \
                 FROM \"{}\".api_token WHERE is_active",
                schema.domain
            )
        }
        Source::Own => format!(
            "SELECT sha256, name, to_jsonb(scopes), expires_at \
             FROM \"{}\".api_token WHERE active",
            schema.name
        ),
    }
}

/// The active tokens of `source`. Expired ones are included: the caller refuses them at
/// each use (a token may expire between two reads).
pub async fn read<'c>(
    conn: impl PgExecutor<'c>,
    source: Source,
    schema: &Schema,
) -> sqlx::Result<Vec<Row>> {
    type Raw = (
        Option<String>,
        Option<String>,
        Option<serde_json::Value>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Raw> = sqlx::query_as(&query(source, schema))
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(sha256, name, scopes, expires_at)| {
            Some(Row {
                sha256: sha256?,
                name: name.unwrap_or_default(),
                scopes: scopes.as_ref().map(scope_names).unwrap_or_default(),
                expires_at,
            })
        })
        .collect())
}

/// The meaningful scopes of a JSON array (other names and values ignored).
fn scope_names(scopes: &serde_json::Value) -> Vec<Scope> {
    scopes
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().and_then(Scope::from_name))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_three_scopes_are_read_and_others_ignored() {
        assert_eq!(
            scope_names(&json!(["read", "superuser", 3, "admin"])),
            vec![Scope::Read, Scope::Admin]
        );
        assert!(scope_names(&json!("write")).is_empty());
    }

    #[test]
    fn each_source_reads_its_own_table() {
        let schema = Schema::default();
        assert!(query(Source::Own, &schema).contains("FROM \"opsdb_api\".api_token WHERE active"));
        let ops_db = query(Source::OpsDb { naive_expiry: true }, &schema);
        assert!(ops_db.contains("FROM \"public\".api_token WHERE is_active"));
        assert!(ops_db.contains("AT TIME ZONE 'UTC'"));
    }
}
