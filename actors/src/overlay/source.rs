//! The read source's side of merged reads: rows of the local replica (the primary on the
//! main site) as JSON, by id, by ids, and one keyset page by an indexed column. Every query
//! runs on the pool `Reads` built, whose sessions time out after
//! [`SOURCE_STATEMENT_TIMEOUT`](super::SOURCE_STATEMENT_TIMEOUT).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use super::page::PageRequest;
use super::reads::IndexValue;
use crate::domain::Table;

/// One row of the read source, as JSON.
pub(super) async fn source_row(
    pool: &PgPool,
    table: Table,
    id: Uuid,
) -> Result<Option<Value>, sqlx::Error> {
    let sql = format!("SELECT to_jsonb(t) FROM {} t WHERE id = $1", table.name());
    let row: Option<Json<Value>> = sqlx::query_scalar(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|Json(v)| v))
}

/// The read source's rows of `table` with these ids (at most a page's).
pub(super) async fn source_rows_by_id(
    pool: &PgPool,
    table: Table,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Value>, sqlx::Error> {
    let sql = format!(
        "SELECT to_jsonb(t) FROM {} t WHERE id = ANY($1)",
        table.name()
    );
    let rows: Vec<Json<Value>> = sqlx::query_scalar(&sql).bind(ids).fetch_all(pool).await?;
    Ok(with_ids(rows).collect())
}

/// One page of the read source's rows of `table` whose `column` is `value`: the first
/// `limit + 1` after the cursor, by id.
pub(super) async fn source_rows(
    pool: &PgPool,
    table: Table,
    column: &str,
    value: IndexValue,
    page: PageRequest,
) -> Result<Vec<(Uuid, Value)>, sqlx::Error> {
    // `column` comes from our own fixed list (Table::indexed_columns), never from a caller.
    // A NULL cursor admits every id: one statement for the first page and the others.
    let sql = format!(
        "SELECT to_jsonb(t) FROM {} t WHERE {column} = $1 AND ($2::uuid IS NULL OR id > $2) \
         ORDER BY id LIMIT $3",
        table.name()
    );
    let query = sqlx::query_scalar::<_, Json<Value>>(&sql);
    let query = match value {
        IndexValue::Int(n) => query.bind(n),
        IndexValue::Uuid(id) => query.bind(id),
    };
    // MAX_LIMIT + 1 fits an i64.
    let fetch = i64::try_from(page.fetch()).unwrap_or(i64::MAX);
    let rows = query.bind(page.after()).bind(fetch).fetch_all(pool).await?;
    Ok(with_ids(rows).collect())
}

/// Each row with its `id` (a row without a UUID `id` is left out: the tables' ids are UUIDs).
fn with_ids(rows: Vec<Json<Value>>) -> impl Iterator<Item = (Uuid, Value)> {
    rows.into_iter().filter_map(|Json(row)| {
        let id = row["id"].as_str().and_then(|s| Uuid::parse_str(s).ok())?;
        Some((id, row))
    })
}

/// For each of `parents`, the first `fetch` rows of `table` whose `column` is that parent,
/// by id: one query whatever the number of parents (a lateral join, one index range per
/// parent).
pub(super) async fn source_rows_each(
    pool: &PgPool,
    table: Table,
    column: &str,
    parents: &[Uuid],
    fetch: usize,
) -> Result<Vec<(Uuid, Value)>, sqlx::Error> {
    // `column` comes from our own fixed list (Table::indexed_columns), never from a caller.
    let sql = format!(
        "SELECT to_jsonb(t) FROM unnest($1::uuid[]) AS p(parent) \
         CROSS JOIN LATERAL (SELECT * FROM {table} c WHERE c.{column} = p.parent \
         ORDER BY c.id LIMIT $2) t",
        table = table.name()
    );
    let fetch = i64::try_from(fetch).unwrap_or(i64::MAX);
    let rows: Vec<Json<Value>> = sqlx::query_scalar(&sql)
        .bind(parents)
        .bind(fetch)
        .fetch_all(pool)
        .await?;
    Ok(with_ids(rows).collect())
}
