//! The service's own objects on the primary: the migrations (embedded from `migrations/`)
//! and the allowlist of writable tables.
//!
//! Guarantees of [`migrate`]:
//! - everything it creates is in the schema `schema.name` (created if missing), sqlx's
//!   `_sqlx_migrations` bookkeeping included: nothing of the service lands in `public`;
//! - it never creates or alters a table of ops-db (`schema.domain`): it only reads their
//!   keys from the catalog for the allowlist;
//! - run again, it changes nothing but the allowlist, which afterwards holds exactly
//!   `schema.tables`.

use std::borrow::Cow;

use anyhow::Context as _;
use futures::future::BoxFuture;
use ops_db_actors::pg::PgTarget;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions as _, Connection as _};

use crate::config::Schema;

/// The migrations as written: their objects in the schema [`BUILT_IN_SCHEMA`].
static EMBEDDED: Migrator = sqlx::migrate!("../migrations");

/// The schema name the migrations' text uses; [`migrate`] replaces it by `schema.name`.
pub const BUILT_IN_SCHEMA: &str = "opsdb_api";

/// Brings the service's schema at `target` up to date and syncs its allowlist with
/// `schema.tables`. Safe to run again.
pub async fn migrate(target: &PgTarget, schema: &Schema) -> anyhow::Result<()> {
    let mut conn = connect(target).await?;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        quote_ident(&schema.name)
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("creating schema {}", schema.name))?;
    // sqlx creates `_sqlx_migrations` unqualified: in the first schema of the path.
    sqlx::query("SELECT pg_catalog.set_config('search_path', $1, false)")
        .bind(quote_ident(&schema.name))
        .execute(&mut conn)
        .await
        .context("setting the search_path")?;
    migrator(&schema.name)
        .await?
        .run(&mut conn)
        .await
        .context("running migrations")?;
    sync_allowlist(&mut conn, schema).await?;
    conn.close().await?;
    Ok(())
}

/// The embedded migrations with [`BUILT_IN_SCHEMA`] replaced by `name` (the checksums
/// follow the text that runs).
async fn migrator(name: &str) -> anyhow::Result<Migrator> {
    let migrations = EMBEDDED
        .iter()
        .map(|m| {
            Migration::new(
                m.version,
                m.description.clone(),
                m.migration_type,
                Cow::Owned(m.sql.replace(BUILT_IN_SCHEMA, name)),
                m.no_tx,
            )
        })
        .collect();
    Migrator::new(Substituted(migrations))
        .await
        .context("preparing the migrations")
}

/// Migrations built at run time, as a source for [`Migrator::new`].
#[derive(Debug)]
struct Substituted(Vec<Migration>);

impl MigrationSource<'static> for Substituted {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(std::future::ready(Ok(self.0)))
    }
}

/// Makes `writable_table` hold exactly `schema.tables`, each with its one-column primary
/// key read from the catalog; one transaction, so the batch function never sees half.
async fn sync_allowlist(conn: &mut PgConnection, schema: &Schema) -> anyhow::Result<()> {
    let own = quote_ident(&schema.name);
    let mut tx = conn.begin().await?;
    let mut keys = Vec::with_capacity(schema.tables.len());
    for table in &schema.tables {
        keys.push(key_column(&mut tx, &schema.domain, table).await?);
    }
    sqlx::query(&format!(
        "DELETE FROM {own}.writable_table WHERE NOT (table_name = ANY ($1))"
    ))
    .bind(&schema.tables)
    .execute(&mut *tx)
    .await
    .context("pruning the allowlist")?;
    for (table, key) in schema.tables.iter().zip(&keys) {
        sqlx::query(&format!(
            "INSERT INTO {own}.writable_table (table_name, table_schema, key_column) \
             VALUES ($1, $2, $3) ON CONFLICT (table_name) DO UPDATE \
             SET table_schema = EXCLUDED.table_schema, key_column = EXCLUDED.key_column"
        ))
        .bind(table)
        .bind(&schema.domain)
        .bind(key)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("adding {table} to the allowlist"))?;
    }
    tx.commit().await?;
    Ok(())
}

/// The one column of the primary key of `domain.table`; an error naming the table when it
/// does not exist or its key is not one column.
async fn key_column(conn: &mut PgConnection, domain: &str, table: &str) -> anyhow::Result<String> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_catalog.pg_constraint k \
         JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
         JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (k.conkey) \
         WHERE k.contype = 'p' AND s.nspname = $1 AND c.relname = $2",
    )
    .bind(domain)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("reading the primary key of {domain}.{table}"))?;
    match keys.as_slice() {
        [key] => Ok(key.clone()),
        [] => anyhow::bail!(
            "schema.tables: {domain}.{table} does not exist or has no primary key \
             (ops-db's tables are not created by migrate)"
        ),
        _ => anyhow::bail!(
            "schema.tables: {domain}.{table} has a primary key of {} columns; \
             only one-column keys can be written",
            keys.len()
        ),
    }
}

/// `name` as an SQL identifier, quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A connection to the primary; the error names it without its password.
pub async fn connect(target: &PgTarget) -> anyhow::Result<PgConnection> {
    let what = || format!("connecting to {}", target.redacted());
    target
        .options()
        .with_context(what)?
        .connect()
        .await
        .with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_migrations_name_their_schema_and_follow_the_configured_one() {
        let built_in = migrator(BUILT_IN_SCHEMA).await.expect("migrator");
        for (m, e) in built_in.iter().zip(EMBEDDED.iter()) {
            assert_eq!(m.checksum, e.checksum, "no change: the same checksum");
        }
        let other = migrator("ops_api_test").await.expect("migrator");
        for m in other.iter() {
            assert!(!m.sql.contains(BUILT_IN_SCHEMA), "{}", m.description);
            assert!(m.sql.contains("ops_api_test."), "{}", m.description);
        }
        let differs = other
            .iter()
            .zip(EMBEDDED.iter())
            .all(|(m, e)| m.checksum != e.checksum);
        assert!(differs, "the checksum follows the text that runs");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("opsdb_api"), "\"opsdb_api\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
