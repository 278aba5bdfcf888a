//! Reading the registry from the read source's catalog.
//!
//! Guarantees:
//! - read from `pg_catalog`, not `information_schema` (which hides the tables the role
//!   cannot write, and the read source's role is a reader);
//! - four queries for all the listed tables together, whatever their number of columns,
//!   in one read-only `REPEATABLE READ` transaction (one snapshot: a column added between
//!   two queries cannot half-appear), each bounded by [`STATEMENT_TIMEOUT`] on the server
//!   and the whole read by [`READ_TIMEOUT`] on this side;
//! - a listed table that is missing, is not a table, or has no one-column primary key is
//!   left out and reported ([`Skipped`]), never guessed at;
//! - the type mapping (`types.rs`) is a pure function of the catalog rows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use super::types::{column_type, max_chars, TypeRow};
use super::{Column, ColumnType, ForeignKey, Registry, TableModel};

/// How long one catalog query may run on the read source.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole read may take here (a connection included).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a read of the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read source failed: {0}")]
    Source(#[from] sqlx::Error),
    #[error("read source did not answer within {0:?}")]
    Timeout(Duration),
}

/// A listed table the registry leaves out, and why (serialised with the reason as text,
/// for `/health` and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub table: String,
    #[serde(serialize_with = "as_text")]
    pub reason: SkipReason,
}

fn as_text<S: serde::Serializer>(reason: &SkipReason, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(reason)
}

/// Why a listed table is not in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// No relation of that name in `schema.domain`.
    Missing,
    /// A view, a sequence, ...: its `relkind`.
    NotATable(String),
    /// No primary key: an update or a delete could not name its row.
    NoPrimaryKey,
    /// A primary key of this many columns: a step names its row by one id.
    CompositeKey(usize),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Missing => write!(f, "no such table in the domain schema"),
            SkipReason::NotATable(kind) => write!(f, "not a table (relkind '{kind}')"),
            SkipReason::NoPrimaryKey => write!(f, "no primary key"),
            SkipReason::CompositeKey(n) => {
                write!(f, "its primary key has {n} columns; one is needed")
            }
        }
    }
}

/// One read: the registry and the listed tables it leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub registry: Registry,
    pub skipped: Vec<Skipped>,
}

/// Reads the shape of `tables` (in the schema `domain`) from `source`.
pub async fn read(source: &PgPool, domain: &str, tables: &[String]) -> Result<Read, ReadError> {
    let read = async {
        let mut tx = source.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let timeout = format!(
            "SET LOCAL statement_timeout = {}",
            STATEMENT_TIMEOUT.as_millis()
        );
        sqlx::query(&timeout).execute(&mut *tx).await?;
        let rows = CatalogRows::fetch(&mut tx, domain, tables).await?;
        tx.rollback().await?;
        Ok::<_, sqlx::Error>(rows)
    };
    let rows = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| ReadError::Timeout(READ_TIMEOUT))??;
    Ok(rows.build(domain, tables))
}

/// A listed relation (`pg_class`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RelationRow {
    pub name: String,
    pub kind: String,
}

/// A column (`pg_attribute`), in `attnum` order.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ColumnRow {
    pub table: String,
    pub name: String,
    pub type_oid: i64,
    pub typmod: i32,
    pub type_name: String,
    pub not_null: bool,
    pub has_default: bool,
    /// `attidentity`: `''`, `'a'` (always), `'d'` (by default).
    pub identity: String,
    /// `attgenerated`: `''` or `'s'` (stored).
    pub generated: String,
}

/// A one-column primary or foreign key (`pg_constraint`); wider ones give `columns` > 1.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ConstraintRow {
    pub table: String,
    /// `p` or `f`.
    pub kind: String,
    pub columns: i32,
    pub column: Option<String>,
    pub ref_schema: Option<String>,
    pub ref_table: Option<String>,
    pub ref_column: Option<String>,
}

/// What the catalog says about the listed tables.
#[derive(Debug, Default)]
pub(crate) struct CatalogRows {
    pub relations: Vec<RelationRow>,
    pub columns: Vec<ColumnRow>,
    pub types: Vec<TypeRow>,
    pub constraints: Vec<ConstraintRow>,
}

const RELATIONS: &str = "\
SELECT c.relname::text AS name, c.relkind::text AS kind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2)";

const COLUMNS: &str = "\
SELECT c.relname::text AS table, a.attname::text AS name, a.atttypid::int8 AS type_oid,
       a.atttypmod AS typmod, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name,
       a.attnotnull AS not_null, a.atthasdef AS has_default,
       a.attidentity::text AS identity, a.attgenerated::text AS generated
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum";

/// The columns' types, and the element and base types under them (an array of a domain
/// over an enum is three rows).
const TYPES: &str = "\
WITH RECURSIVE types(oid) AS (
  SELECT a.atttypid
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')
    AND a.attnum > 0 AND NOT a.attisdropped
  UNION
  SELECT u.oid FROM types t
  JOIN pg_catalog.pg_type p ON p.oid = t.oid
  CROSS JOIN LATERAL (VALUES (CASE WHEN p.typcategory = 'A' THEN p.typelem ELSE 0 END),
                             (p.typbasetype)) AS u(oid)
  WHERE u.oid <> 0
)
SELECT p.oid::int8 AS oid, p.typname::text AS name,
       p.typnamespace = 'pg_catalog'::regnamespace AS builtin,
       p.typtype::text AS kind, p.typcategory::text AS category,
       p.typelem::int8 AS element, p.typbasetype::int8 AS base, p.typtypmod AS typmod,
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
             WHERE e.enumtypid = p.oid ORDER BY e.enumsortorder) AS labels
FROM types t JOIN pg_catalog.pg_type p ON p.oid = t.oid";

const CONSTRAINTS: &str = "\
SELECT c.relname::text AS table, k.contype::text AS kind,
       cardinality(k.conkey) AS columns,
       (SELECT a.attname::text FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]) AS column,
       rn.nspname::text AS ref_schema, rc.relname::text AS ref_table,
       (SELECT a.attname::text FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = k.confrelid AND a.attnum = k.confkey[1]) AS ref_column
FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = k.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2) AND k.contype IN ('p', 'f')
ORDER BY c.relname, k.contype DESC, k.conname";

impl CatalogRows {
    async fn fetch(
        tx: &mut Transaction<'_, Postgres>,
        domain: &str,
        tables: &[String],
    ) -> Result<Self, sqlx::Error> {
        Ok(Self {
            relations: sqlx::query_as(RELATIONS)
                .bind(domain)
                .bind(tables)
                .fetch_all(&mut **tx)
                .await?,
            columns: sqlx::query_as(COLUMNS)
                .bind(domain)
                .bind(tables)
                .fetch_all(&mut **tx)
                .await?,
            types: sqlx::query_as(TYPES)
                .bind(domain)
                .bind(tables)
                .fetch_all(&mut **tx)
                .await?,
            constraints: sqlx::query_as(CONSTRAINTS)
                .bind(domain)
                .bind(tables)
                .fetch_all(&mut **tx)
                .await?,
        })
    }

    /// The registry of `tables`, from these rows.
    pub(crate) fn build(self, domain: &str, tables: &[String]) -> Read {
        let types: HashMap<i64, TypeRow> = self.types.into_iter().map(|t| (t.oid, t)).collect();
        let mut columns: HashMap<String, Vec<Column>> = HashMap::new();
        for row in &self.columns {
            columns
                .entry(row.table.clone())
                .or_default()
                .push(column(row, &types));
        }
        let mut registry = Registry {
            tables: BTreeMap::new(),
            read_at: Some(Utc::now()),
        };
        let mut skipped = Vec::new();
        for table in tables {
            let relation = self.relations.iter().find(|r| &r.name == table);
            let constraints: Vec<&ConstraintRow> = self
                .constraints
                .iter()
                .filter(|k| &k.table == table)
                .collect();
            let model = match relation {
                None => Err(SkipReason::Missing),
                Some(r) if !matches!(r.kind.as_str(), "r" | "p") => {
                    Err(SkipReason::NotATable(r.kind.clone()))
                }
                Some(_) => key(&constraints).map(|key| TableModel {
                    schema: domain.to_owned(),
                    name: table.clone(),
                    columns: columns.remove(table).unwrap_or_default(),
                    key,
                    foreign_keys: foreign_keys(&constraints),
                }),
            };
            match model {
                Ok(model) => {
                    registry.tables.insert(table.clone(), model);
                }
                Err(reason) => skipped.push(Skipped {
                    table: table.clone(),
                    reason,
                }),
            }
        }
        Read { registry, skipped }
    }
}

/// The one column of the primary key.
fn key(constraints: &[&ConstraintRow]) -> Result<String, SkipReason> {
    let primary = constraints
        .iter()
        .find(|k| k.kind == "p")
        .ok_or(SkipReason::NoPrimaryKey)?;
    match (primary.columns, &primary.column) {
        (1, Some(column)) => Ok(column.clone()),
        (n, _) => Err(SkipReason::CompositeKey(usize::try_from(n).unwrap_or(0))),
    }
}

/// The one-column foreign keys (wider ones are left to the primary to check).
fn foreign_keys(constraints: &[&ConstraintRow]) -> Vec<ForeignKey> {
    constraints
        .iter()
        .filter(|k| k.kind == "f" && k.columns == 1)
        .filter_map(|k| {
            Some(ForeignKey {
                column: k.column.clone()?,
                ref_schema: k.ref_schema.clone()?,
                ref_table: k.ref_table.clone()?,
                ref_column: k.ref_column.clone()?,
            })
        })
        .collect()
}

fn column(row: &ColumnRow, types: &HashMap<i64, TypeRow>) -> Column {
    let ty = column_type(types, row.type_oid);
    let max_chars = match ty {
        ColumnType::Text => max_chars(types, row.type_oid, row.typmod),
        _ => None,
    };
    Column {
        name: row.name.clone(),
        ty,
        type_name: row.type_name.clone(),
        nullable: !row.not_null,
        has_default: row.has_default || !row.identity.is_empty(),
        generated: row.identity == "a" || !row.generated.is_empty(),
        max_chars,
    }
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
