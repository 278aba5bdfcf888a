//! The one query that reads the replica's freshness from the replica itself.

use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::verdict::{Observation, Receiver};
use crate::replica::ReplicaError;

/// One row: recovery, replay, the WAL receiver (`pg_stat_wal_receiver` has a row only
/// while a receiver runs; its columns but the pid are NULL without `pg_read_all_stats`)
/// and this site's heartbeat as replayed. Ages on the replica's clock (`clock_timestamp()`,
/// not the statement's start). Recovery functions are only called in recovery: on a
/// primary `pg_is_wal_replay_paused()` raises.
fn sql(schema: &str) -> String {
    format!(
        "SELECT r.rec, \
           extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8, \
           CASE WHEN r.rec THEN pg_is_wal_replay_paused() ELSE false END, \
           CASE WHEN r.rec THEN greatest(pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn(), 0)::int8 END, \
           w.pid, w.status, \
           extract(epoch FROM clock_timestamp() - w.last_msg_receipt_time)::float8, \
           extract(epoch FROM clock_timestamp() - w.latest_end_time)::float8, \
           w.received_tli, \
           extract(epoch FROM clock_timestamp() - h.beat_at)::float8 \
         FROM (SELECT pg_is_in_recovery() AS rec) r \
         LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true \
         LEFT JOIN \"{schema}\".heartbeat h ON h.site = $1"
    )
}

/// Reads the replica's freshness (bounded by `timeout`, as the replay position is).
pub async fn observe(
    pg: &mut PgConnection,
    schema: &str,
    site: &str,
    timeout: Duration,
) -> Result<Observation, ReplicaError> {
    let sql = sql(schema);
    let query = sqlx::query(&sql).bind(site).fetch_one(pg);
    let row = tokio::time::timeout(timeout, query)
        .await
        .map_err(|_| ReplicaError::QueryTimeout(timeout))??;
    let non_negative = |a: Option<f64>| a.map(|a| a.max(0.0));
    let pid: Option<i32> = row.try_get(4)?;
    let receiver = match pid {
        None => None,
        Some(_) => Some(Receiver {
            status: row.try_get(5)?,
            last_msg_age: non_negative(row.try_get(6)?),
            latest_end_age: non_negative(row.try_get(7)?),
            timeline: row.try_get(8)?,
        }),
    };
    let unreplayed: Option<i64> = row.try_get(3)?;
    Ok(Observation {
        in_recovery: row.try_get(0)?,
        replay_age: non_negative(row.try_get(1)?),
        replay_paused: row.try_get(2)?,
        unreplayed_bytes: unreplayed.map(|b| b.max(0) as u64),
        receiver,
        heartbeat_age: non_negative(row.try_get(9)?),
    })
}
