//! Merged reads at the summit: rows of the read source (the local replica; the primary on
//! the main site) merged with the overlay of records not yet replicated, and transaction
//! lifecycles.
//!
//! Guarantees:
//! - the overlay wins (it holds the newest writer's after-image): a complete overlay
//!   record is answered without asking the read source, a `_partial` one is laid over the
//!   read source's row (`merge.rs`);
//! - overlay records are found through record keys and index sets, never key scans;
//! - every record carries `"sync": {"state", "transaction_id", "lsn"}`: its latest
//!   writer's lifecycle, or `replicated` for a read-source-only row; the writers of one
//!   answer are looked up in one pipeline, whatever their count;
//! - a list by a column holds only records whose merged value of that column is the one
//!   asked for: a buffered update of the column moves its record from one list to the
//!   other, whichever side (replica row, overlay index set) brought it;
//! - every list is a keyset page of at most `limit` records (`page.rs`), and the read
//!   source's queries time out after [`SOURCE_STATEMENT_TIMEOUT`] (a slow replica is one
//!   that does not answer);
//! - when the read source does not answer, a list comes from the overlay alone and says
//!   so; a single record the overlay cannot answer alone is [`ReadError::Source`];
//! - a lifecycle comes from Redis while Redis keeps it, then from the ledger.
//!
//! Knows nothing of HTTP: callers map [`ReadError`] to their answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value};
use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::merge::{self, WriterState};
use super::page::{self, PageRequest};
use super::record::index_value;
use super::scripts::OVERLAY_READ;
use super::source::{source_row, source_rows, source_rows_by_id};
use super::{Keys, OverlayRecord, TxState, UnknownState};
use crate::domain::Table;
use crate::pg::PgTarget;

mod gate;
mod nested;

use gate::Gate;

/// Why a read has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Redis did not answer, or answered what cannot be read (an unknown lifecycle state).
    #[error("redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The read source did not answer.
    #[error("read source failed: {0}")]
    Source(#[from] sqlx::Error),
    #[error("no {} {id}", table.name())]
    NoSuchRecord { table: Table, id: Uuid },
    /// Neither Redis nor the ledger knows the transaction.
    #[error("no transaction {0}")]
    NoSuchTransaction(Uuid),
}

/// What Redis holds but Rust cannot read is a Redis failure like any unreadable reply.
fn unreadable(err: UnknownState) -> ReadError {
    ReadError::Redis(redis::ParsingError::from(err.to_string()).into())
}

/// A column value to look records up by (one of `Table::indexed_columns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexValue {
    Int(i64),
    Uuid(Uuid),
}

impl IndexValue {
    /// The value as a record's JSON holds it.
    fn json(self) -> Value {
        match self {
            IndexValue::Int(n) => n.into(),
            IndexValue::Uuid(id) => id.to_string().into(),
        }
    }

    /// The text naming its index set, as the write side names it.
    fn text(self) -> String {
        match self {
            IndexValue::Int(n) => index_value(&n.into()),
            IndexValue::Uuid(id) => index_value(&id.to_string().into()),
        }
    }
}

/// A record and what the overlay holds of it (either may be missing).
type Found = (Option<Value>, Option<OverlayRecord>);

/// A merged record and its latest writer, if the overlay holds it.
type Merged = (Map<String, Value>, Option<Uuid>);

/// How long the read source may take over one query: a replica that hangs (a full disk,
/// a lock) must fail the read rather than hold the caller and a pooled connection.
pub const SOURCE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One page of a list read.
#[derive(Debug, Default)]
pub struct Listed {
    /// At most the page's limit, in id order.
    pub records: Vec<Value>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<Uuid>,
    /// Whether the read source answered (if not, `records` are the overlay's alone).
    pub source_answered: bool,
}

pub struct Reads {
    /// The read source (replica; the primary on the main site); `None` if not configured.
    pool: Option<PgPool>,
    keys: Keys,
    /// The ledger query, in the service's own schema (`schema.name`).
    ledger_sql: String,
    /// Cuts the wait for a read-source connection short while it gives none (`gate.rs`).
    gate: Gate,
}

impl Reads {
    /// Connects lazily: a read source down at boot fails reads, not the start; only an
    /// unusable URL is an error here.
    pub fn new(source: Option<&PgTarget>, keys: Keys, schema: &str) -> Result<Self, sqlx::Error> {
        let pool = source
            .map(|source| source.lazy_pool(8, SOURCE_STATEMENT_TIMEOUT, Duration::from_secs(2)))
            .transpose()?;
        let ledger_sql = format!(
            "SELECT op, stream_id, applied_at FROM \"{schema}\".applied_transaction \
             WHERE transaction_id = $1"
        );
        Ok(Self {
            pool,
            keys,
            ledger_sql,
            gate: Gate::default(),
        })
    }

    /// The reads' metrics (the read source's gate).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.gate.register(registry);
    }

    /// A read-source query on `pool`, through the gate: its wait for a connection is cut
    /// short while the source is known not to give them.
    async fn gated<T>(
        &self,
        pool: &PgPool,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        self.gate.run(pool, query).await
    }

    /// The read source's pool (also where the `api_token` table is read).
    pub fn pool(&self) -> Option<&PgPool> {
        self.pool.as_ref()
    }

    /// A transaction's lifecycle: from Redis while it is kept there, then from the ledger
    /// on the read source.
    pub async fn transaction(
        &self,
        redis: &mut MultiplexedConnection,
        id: Uuid,
    ) -> Result<Value, ReadError> {
        let life: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.lifecycle(id))
            .query_async(redis)
            .await?;
        if !life.is_empty() {
            return merge::lifecycle(id, &life).map_err(unreadable);
        }
        let Some(pool) = &self.pool else {
            return Err(ReadError::NoSuchTransaction(id));
        };
        let row: Option<(String, String, DateTime<Utc>)> = self
            .gated(
                pool,
                sqlx::query_as(&self.ledger_sql)
                    .bind(id)
                    .fetch_optional(pool),
            )
            .await?;
        let (op, _stream_id, applied_at) = row.ok_or(ReadError::NoSuchTransaction(id))?;
        Ok(merge::ledger(id, &op, applied_at))
    }

    /// A transaction's state, or `None` if Redis no longer knows it.
    pub async fn state(
        &self,
        redis: &mut MultiplexedConnection,
        id: Uuid,
    ) -> Result<Option<TxState>, ReadError> {
        Ok(redis::cmd("HGET")
            .arg(self.keys.lifecycle(id))
            .arg("state")
            .query_async(redis)
            .await?)
    }

    /// One record, merged.
    pub async fn record(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        id: Uuid,
    ) -> Result<Value, ReadError> {
        let overlay = self
            .overlay_records(redis, table, std::iter::once(&id))
            .await?
            .pop()
            .flatten();
        let replica = match &self.pool {
            Some(pool) if overlay.as_ref().is_none_or(|o| o.partial) => {
                self.gated(pool, source_row(pool, table, id)).await?
            }
            _ => None,
        };
        self.merge(redis, vec![(replica, overlay)])
            .await?
            .pop()
            .ok_or(ReadError::NoSuchRecord { table, id })
    }

    /// One page of the records of `table` whose `column` is `value`, merged, in id order
    /// (time order). When the read source does not answer, the overlay's records alone are
    /// returned (the caller says so), rather than nothing.
    pub async fn records_where(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        column: &str,
        value: IndexValue,
        page: PageRequest,
    ) -> Result<Listed, ReadError> {
        // Uuid order is the order of their text (lowercase hex), so `id` order.
        let mut by_id: BTreeMap<Uuid, Found> = BTreeMap::new();
        let mut source_answered = true;
        if let Some(pool) = &self.pool {
            match self
                .gated(pool, source_rows(pool, table, column, value, page))
                .await
            {
                Ok(rows) => by_id.extend(rows.into_iter().map(|(id, row)| (id, (Some(row), None)))),
                Err(err) => {
                    tracing::warn!(error = %err, "replica query failed, answering from the overlay alone");
                    source_answered = false;
                }
            }
        }
        for id in self.indexed_ids(redis, table, column, value, page).await? {
            by_id.entry(id).or_default();
        }
        let (by_id, next) = page::cut(by_id, page.limit());
        // The overlay of every id of the page, not only of the indexed ones: an update
        // buffered for a replica row (a finish) is in no index set, and must still win.
        let overlays = self.overlay_records(redis, table, by_id.keys()).await?;
        let ids: Vec<Uuid> = by_id.keys().copied().collect();
        let mut found: Vec<Found> = by_id
            .into_values()
            .zip(overlays)
            .map(|((row, _), overlay)| (row, overlay))
            .collect();
        if source_answered {
            self.rows_under_partials(table, &ids, &mut found).await?;
        }
        let records = self.merge(redis, found).await?;
        // The index entry or the replica row that brought a record here may be one a
        // buffered update moved away from: only records whose current value it is count.
        let expected = value.json();
        let records = records
            .into_iter()
            .filter(|record| merge::has_value(record, column, &expected))
            .collect();
        Ok(Listed {
            records,
            next,
            source_answered,
        })
    }

    /// Fills in the read source's row under each `_partial` overlay record found only
    /// through an index set (an update that moved a replica row to this value), in one
    /// query: the update is laid over that row. `ids` are the ids of `found`, in order.
    async fn rows_under_partials(
        &self,
        table: Table,
        ids: &[Uuid],
        found: &mut [Found],
    ) -> Result<(), ReadError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let bare =
            |(row, overlay): &Found| row.is_none() && overlay.as_ref().is_some_and(|o| o.partial);
        let wanted: Vec<Uuid> = ids
            .iter()
            .zip(found.iter())
            .filter(|(_, f)| bare(f))
            .map(|(id, _)| *id)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let rows = self
            .gated(pool, source_rows_by_id(pool, table, &wanted))
            .await?;
        // An id may be in `found` twice (nested lists of two parents).
        for (id, f) in ids.iter().zip(found.iter_mut()) {
            if bare(f) {
                f.0 = rows.get(id).cloned();
            }
        }
        Ok(())
    }

    /// The ids of one page of the index set of `column` = `value`: the first `limit + 1`
    /// after the cursor.
    async fn indexed_ids(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        column: &str,
        value: IndexValue,
        page: PageRequest,
    ) -> Result<Vec<Uuid>, ReadError> {
        // Index sets are sorted sets of score 0, ordered by member text: a UUID's lowercase
        // text sorts as the UUID does, so one range read is one page, whatever the size.
        let from = page
            .after()
            .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.keys.index(table, column, &value.text()))
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(page.fetch())
            .query_async(redis)
            .await?;
        // buffer.lua writes only UUIDs; anything else has no record.
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    /// What the overlay holds of each of `ids`, in their order, in one pipeline, each
    /// with its key column (which the overlay does not store). An id whose record was
    /// released meanwhile has none (the replica has it now).
    async fn overlay_records(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        ids: impl ExactSizeIterator<Item = &Uuid>,
    ) -> Result<Vec<Option<OverlayRecord>>, ReadError> {
        if ids.len() == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.copied().collect();
        let keys = ids.iter().map(|id| self.keys.record(table, *id)).collect();
        let records = self.read_overlay(redis, keys).await?;
        Ok(records
            .into_iter()
            .zip(ids)
            .map(|(record, id)| record.map(|r| r.with_id(id)))
            .collect())
    }

    /// The overlay record hashes `keys`, in their order, as readers may see them
    /// ([`OverlayRecord::visible`]): read with the staging set in one script call, so a
    /// record and whether its writer is committed are seen at the same moment.
    async fn read_overlay(
        &self,
        redis: &mut MultiplexedConnection,
        keys: Vec<String>,
    ) -> Result<Vec<Option<OverlayRecord>>, ReadError> {
        let mut call = OVERLAY_READ.key(self.keys.staging());
        for key in &keys {
            call.key(key);
        }
        // The staging ids, then each hash flat (field, value, ...).
        let mut replies: Vec<Vec<String>> = call.invoke_async(redis).await?;
        if replies.len() != keys.len() + 1 {
            let what = format!(
                "overlay_read.lua answered {} lists for {} keys",
                replies.len(),
                keys.len()
            );
            return Err(ReadError::Redis(redis::ParsingError::from(what).into()));
        }
        let staging: HashSet<String> = replies.remove(0).into_iter().collect();
        Ok(replies
            .into_iter()
            .map(|flat| {
                let mut hash = HashMap::with_capacity(flat.len() / 2);
                let mut fields = flat.into_iter();
                while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
                    hash.insert(field, value);
                }
                OverlayRecord::visible(hash, &staging)
            })
            .collect())
    }

    /// Overlays over read-source rows, each with its sync field; records neither side has
    /// are left out.
    async fn merge(
        &self,
        redis: &mut MultiplexedConnection,
        found: Vec<Found>,
    ) -> Result<Vec<Value>, ReadError> {
        Ok(self
            .merge_groups(redis, vec![found])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// [`Reads::merge`] of several groups, their writers looked up in one pipeline.
    async fn merge_groups(
        &self,
        redis: &mut MultiplexedConnection,
        groups: Vec<Vec<Found>>,
    ) -> Result<Vec<Vec<Value>>, ReadError> {
        let merged: Vec<Vec<Merged>> = groups
            .into_iter()
            .map(|found| {
                found
                    .into_iter()
                    .filter_map(|(replica, overlay)| merge::merge_one(replica, overlay))
                    .collect()
            })
            .collect();
        let writers: Vec<Uuid> = merged.iter().flatten().filter_map(|(_, w)| *w).collect();
        let states = self.writer_states(redis, writers).await?;
        Ok(merged
            .into_iter()
            .map(|group| {
                group
                    .into_iter()
                    .map(|(record, writer)| {
                        merge::answer(record, writer.map(|tx| (tx, states.get(&tx))))
                    })
                    .collect()
            })
            .collect())
    }

    /// The state and commit LSN of each writer, in one pipeline.
    async fn writer_states(
        &self,
        redis: &mut MultiplexedConnection,
        writers: Vec<Uuid>,
    ) -> Result<HashMap<Uuid, WriterState>, ReadError> {
        if writers.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for tx in &writers {
            pipe.cmd("HMGET")
                .arg(self.keys.lifecycle(*tx))
                .arg("state")
                .arg("commit_lsn");
        }
        let replies: Vec<WriterState> = pipe.query_async(redis).await?;
        Ok(writers.into_iter().zip(replies).collect())
    }
}
