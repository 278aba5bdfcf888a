//! The nested lists of a list answer, for every parent of the page at once: the first
//! page of each parent's children, in a bounded number of round trips whatever the
//! number of parents (one read-source query, one more for rows under partial overlay
//! records, and three Redis pipelines), never one query per parent.
//!
//! Each parent's page follows the same rules as [`Reads::records_where`]: overlay wins,
//! the `sync` field, only records whose merged value is the parent, cut at `limit` with
//! the cursor of the next page.

use std::collections::{BTreeMap, HashMap};

use redis::aio::MultiplexedConnection;
use serde_json::Value;
use uuid::Uuid;

use super::super::merge;
use super::super::page::{self, PageRequest};
use super::super::record::index_value;
use super::super::source::source_rows_each;
use super::{Found, Listed, ReadError, Reads};
use crate::domain::Table;

impl Reads {
    /// For each of `parents` (in their order), the first page of the records of `table`
    /// whose `column` is that parent, of `page`'s limit (its cursor is not used).
    pub async fn records_where_each(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        column: &str,
        parents: &[Uuid],
        page: PageRequest,
    ) -> Result<Vec<Listed>, ReadError> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let page = page.after_id(None);
        let position: HashMap<Uuid, usize> =
            parents.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let mut sides: Vec<BTreeMap<Uuid, Found>> = vec![BTreeMap::new(); parents.len()];
        let mut source_answered = true;
        if let Some(pool) = &self.pool {
            match self
                .gated(
                    pool,
                    source_rows_each(pool, table, column, parents, page.fetch()),
                )
                .await
            {
                Ok(rows) => {
                    for (id, row) in rows {
                        let parent = row[column].as_str().and_then(|s| Uuid::parse_str(s).ok());
                        if let Some(&i) = parent.and_then(|p| position.get(&p)) {
                            sides[i].insert(id, (Some(row), None));
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "replica query failed, answering from the overlay alone");
                    source_answered = false;
                }
            }
        }
        let indexed = self
            .indexed_ids_each(redis, table, column, parents, page)
            .await?;
        for (side, ids) in sides.iter_mut().zip(indexed) {
            for id in ids {
                side.entry(id).or_default();
            }
        }
        let cut: Vec<(BTreeMap<Uuid, Found>, Option<Uuid>)> = sides
            .into_iter()
            .map(|side| page::cut(side, page.limit()))
            .collect();
        let ids: Vec<Uuid> = cut
            .iter()
            .flat_map(|(side, _)| side.keys().copied())
            .collect();
        let overlays = self.overlay_records(redis, table, ids.iter()).await?;
        let mut overlays = overlays.into_iter();
        let mut found: Vec<Found> = Vec::with_capacity(ids.len());
        let mut sizes = Vec::with_capacity(cut.len());
        let mut nexts = Vec::with_capacity(cut.len());
        for (side, next) in cut {
            sizes.push(side.len());
            nexts.push(next);
            for (row, _) in side.into_values() {
                found.push((row, overlays.next().flatten()));
            }
        }
        if source_answered {
            self.rows_under_partials(table, &ids, &mut found).await?;
        }
        let mut groups = Vec::with_capacity(sizes.len());
        let mut found = found.into_iter();
        for size in sizes {
            groups.push(found.by_ref().take(size).collect());
        }
        let merged = self.merge_groups(redis, groups).await?;
        Ok(merged
            .into_iter()
            .zip(parents)
            .zip(nexts)
            .map(|((records, parent), next)| {
                let expected = Value::String(parent.to_string());
                let records = records
                    .into_iter()
                    .filter(|record| merge::has_value(record, column, &expected))
                    .collect();
                Listed {
                    records,
                    next,
                    source_answered,
                }
            })
            .collect())
    }

    /// The first `limit + 1` ids of each parent's index set, in one pipeline.
    async fn indexed_ids_each(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        column: &str,
        parents: &[Uuid],
        page: PageRequest,
    ) -> Result<Vec<Vec<Uuid>>, ReadError> {
        let mut pipe = redis::pipe();
        for parent in parents {
            let value = index_value(&parent.to_string().into());
            pipe.cmd("ZRANGEBYLEX")
                .arg(self.keys.index(table, column, &value))
                .arg("-")
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(page.fetch());
        }
        let sets: Vec<Vec<String>> = pipe.query_async(redis).await?;
        // buffer.lua writes only UUIDs; anything else has no record.
        Ok(sets
            .into_iter()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| Uuid::parse_str(id).ok())
                    .collect()
            })
            .collect())
    }
}
