//! Reads at the summit: rows of the local replica merged with the overlay of records not
//! yet replicated (overlay wins: it holds the newest writer's after-image), found through
//! index sets, never key scans. Every record says where it stands:
//! `"sync": {"state", "transaction_id", "lsn"}`.
//!
//! Timestamps are formatted one way (RFC 3339, microseconds, `Z`) whichever side a record
//! comes from, so a record reads the same before and after its overlay is released.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use ops_db_actors::domain::Table;
use ops_db_actors::overlay::{index_value, Keys, OverlayRecord, TxState};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::types::Json;
use uuid::Uuid;

use crate::ops::ApiError;

const TIMESTAMP_COLUMNS: [&str; 4] = ["start_time", "end_time", "created_at", "finalized_at"];

/// A column value to look records up by.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    Int(i64),
    Uuid(Uuid),
}

impl Key {
    fn index_value(self) -> String {
        match self {
            Key::Int(n) => index_value(&n.into()),
            Key::Uuid(id) => index_value(&id.to_string().into()),
        }
    }
}

pub struct Reads {
    /// The read source (replica; the primary on the main site); `None` if not configured.
    pool: Option<PgPool>,
    keys: Keys,
}

fn iso_ms(ms: &str) -> Value {
    ms.parse::<i64>()
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map_or(Value::Null, |t| {
            json!(t.to_rfc3339_opts(SecondsFormat::Millis, true))
        })
}

/// One way to write timestamps, whichever side a record comes from.
fn normalise(mut record: Map<String, Value>) -> Map<String, Value> {
    for column in TIMESTAMP_COLUMNS {
        if let Some(Value::String(text)) = record.get(column) {
            if let Ok(t) = DateTime::parse_from_rfc3339(text) {
                let t = t
                    .with_timezone(&Utc)
                    .to_rfc3339_opts(SecondsFormat::Micros, true);
                record.insert(column.to_owned(), json!(t));
            }
        }
    }
    record
}

impl Reads {
    pub fn new(read_url: Option<&str>, keys: Keys) -> Result<Self, sqlx::Error> {
        let pool = read_url
            .map(|url| {
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy(url)
            })
            .transpose()?;
        Ok(Self { pool, keys })
    }

    /// A transaction's lifecycle: from Redis while it is kept there, then from the ledger
    /// on the read source.
    pub async fn transaction(
        &self,
        redis: &mut MultiplexedConnection,
        id: Uuid,
    ) -> Result<Value, ApiError> {
        let life: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.lifecycle(id))
            .query_async(redis)
            .await
            .map_err(|e| ApiError::redis_unavailable(&e))?;
        if !life.is_empty() {
            let state: Option<TxState> = life
                .get("state")
                .map(|s| s.parse())
                .transpose()
                .map_err(|e| ApiError::redis_unavailable(&e))?;
            let text = |k: &str| life.get(k).map_or(Value::Null, |v| json!(v));
            let time = |k: &str| life.get(k).map_or(Value::Null, |v| iso_ms(v));
            return Ok(json!({
                "transaction_id": id,
                "state": state,
                "op": text("op"),
                "buffered_at": time("buffered_at"),
                "forwarded_at": time("forwarded_at"),
                "replicated_at": time("replicated_at"),
                "dead_at": time("dead_at"),
                "commit_lsn": text("commit_lsn"),
                "reason": text("reason"),
                "sqlstate": text("sqlstate"),
                "attempts": life.get("attempts").and_then(|a| a.parse::<u64>().ok()),
                "source": "buffer",
            }));
        }
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_transaction",
                format!("no transaction {id}"),
            )
            .with_field("id")
        };
        let Some(pool) = &self.pool else {
            return Err(not_found());
        };
        let row: Option<(String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT op, stream_id, applied_at FROM applied_transaction WHERE transaction_id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| ApiError::replica_unavailable(&e))?;
        let (op, _stream_id, applied_at) = row.ok_or_else(not_found)?;
        Ok(json!({
            "transaction_id": id,
            "state": TxState::Replicated,
            "op": op,
            "applied_at": applied_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "source": "ledger",
        }))
    }

    /// A transaction's state, or `None` if Redis no longer knows it.
    pub async fn state(
        &self,
        redis: &mut MultiplexedConnection,
        id: Uuid,
    ) -> Result<Option<TxState>, ApiError> {
        redis::cmd("HGET")
            .arg(self.keys.lifecycle(id))
            .arg("state")
            .query_async(redis)
            .await
            .map_err(|e| ApiError::redis_unavailable(&e))
    }

    /// One record, merged; `None` if neither side has it.
    pub async fn record(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        id: Uuid,
    ) -> Result<Option<Value>, ApiError> {
        let overlay: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.record(table, id))
            .query_async(redis)
            .await
            .map_err(|e| ApiError::redis_unavailable(&e))?;
        let overlay = OverlayRecord::parse(overlay);
        let complete_overlay = overlay.as_ref().is_some_and(|o| !o.partial);
        let replica = match &self.pool {
            Some(pool) if !complete_overlay => {
                let sql = format!("SELECT to_jsonb(t) FROM {} t WHERE id = $1", table.name());
                let row: Option<Json<Value>> = sqlx::query_scalar(&sql)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| ApiError::replica_unavailable(&e))?;
                row.map(|Json(v)| v)
            }
            _ => None,
        };
        Ok(self.merge(redis, vec![(replica, overlay)]).await?.pop())
    }

    /// The records of `table` whose `column` is `key`, merged, ordered by id (time order),
    /// and whether the replica answered: when it does not, the overlay's records alone are
    /// returned (the caller says so), rather than nothing.
    pub async fn records_where(
        &self,
        redis: &mut MultiplexedConnection,
        table: Table,
        column: &str,
        key: Key,
    ) -> Result<(Vec<Value>, bool), ApiError> {
        // Uuid order is the order of their text (lowercase hex), so `id` order as before.
        let mut by_id: BTreeMap<Uuid, (Option<Value>, Option<OverlayRecord>)> = BTreeMap::new();
        let mut replica_answered = true;
        if let Some(pool) = &self.pool {
            // `column` comes from our own fixed list (Table::indexed_columns), never from a caller.
            let sql = format!(
                "SELECT to_jsonb(t) FROM {} t WHERE {column} = $1 ORDER BY id",
                table.name()
            );
            let query = sqlx::query_scalar::<_, Json<Value>>(&sql);
            let query = match key {
                Key::Int(n) => query.bind(n),
                Key::Uuid(id) => query.bind(id),
            };
            match query.fetch_all(pool).await {
                Ok(rows) => {
                    for Json(row) in rows {
                        if let Some(id) = row["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                            by_id.insert(id, (Some(row.clone()), None));
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "replica query failed, answering from the overlay alone");
                    replica_answered = false;
                }
            }
        }
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.index(table, column, &key.index_value()))
            .query_async(redis)
            .await
            .map_err(|e| ApiError::redis_unavailable(&e))?;
        // Index sets hold the ids buffer.lua wrote, all UUIDs; anything else has no record.
        let ids: Vec<Uuid> = ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGETALL").arg(self.keys.record(table, *id));
            }
            let overlays: Vec<HashMap<String, String>> = pipe
                .query_async(redis)
                .await
                .map_err(|e| ApiError::redis_unavailable(&e))?;
            for (id, overlay) in ids.into_iter().zip(overlays) {
                by_id.entry(id).or_default().1 = OverlayRecord::parse(overlay);
            }
        }
        let records = self.merge(redis, by_id.into_values().collect()).await?;
        Ok((records, replica_answered))
    }

    /// Overlay over replica row, with the sync field; empty if there is no record.
    /// Overlays over replica rows, each with its sync field; records neither side has are
    /// left out. The writers' lifecycles are read in one pipeline, whatever the count.
    async fn merge(
        &self,
        redis: &mut MultiplexedConnection,
        rows: Vec<(Option<Value>, Option<OverlayRecord>)>,
    ) -> Result<Vec<Value>, ApiError> {
        let merged: Vec<(Map<String, Value>, Option<Uuid>)> = rows
            .into_iter()
            .filter_map(|(replica, overlay)| merge_one(replica, overlay))
            .collect();
        let writers: Vec<Uuid> = merged.iter().filter_map(|(_, w)| *w).collect();
        let mut states: HashMap<Uuid, (Option<TxState>, Option<String>)> = HashMap::new();
        if !writers.is_empty() {
            let mut pipe = redis::pipe();
            for tx in &writers {
                pipe.cmd("HMGET")
                    .arg(self.keys.lifecycle(*tx))
                    .arg("state")
                    .arg("commit_lsn");
            }
            let replies: Vec<(Option<TxState>, Option<String>)> = pipe
                .query_async(redis)
                .await
                .map_err(|e| ApiError::redis_unavailable(&e))?;
            states.extend(writers.into_iter().zip(replies));
        }
        Ok(merged
            .into_iter()
            .map(|(record, writer)| {
                let sync = match writer {
                    Some(tx) => {
                        let (state, lsn) = states.get(&tx).cloned().unwrap_or_default();
                        json!({ "state": state.unwrap_or(TxState::Buffered), "transaction_id": tx, "lsn": lsn })
                    }
                    None => json!({ "state": TxState::Replicated, "transaction_id": null, "lsn": null }),
                };
                let mut record = normalise(record);
                record.insert("sync".into(), sync);
                Value::Object(record)
            })
            .collect())
    }
}

/// One record: the overlay over the replica's row, and its latest writer if buffered.
fn merge_one(
    replica: Option<Value>,
    overlay: Option<OverlayRecord>,
) -> Option<(Map<String, Value>, Option<Uuid>)> {
    let Some(overlay) = overlay else {
        return match replica {
            Some(Value::Object(row)) => Some((row, None)),
            Some(_) => Some((Map::new(), None)),
            None => None,
        };
    };
    let mut record = match replica {
        // An update buffered for a record the replica does not have (yet): nothing to show.
        None if overlay.partial => return None,
        Some(Value::Object(row)) if overlay.partial => row,
        _ => Map::new(),
    };
    record.extend(overlay.columns);
    Some((record, overlay.writer))
}
