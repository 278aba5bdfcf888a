//! Replicated means confirmed: a forwarded transaction becomes `replicated` only when the
//! replica's replay position is past its commit LSN AND the replica's ledger holds it.
//!
//! The LSN alone is not enough: after a failover to a standby that missed the last commits,
//! or a restore from a backup, the replica passes those LSNs on another history, where the
//! transactions do not exist. So the transactions due by LSN are looked up in the ledger,
//! [`PAGE`] at a time (one query each), and only the ones it holds are marked (bounded
//! `replicated.lua` calls). The others stay `forwarded`, keep their overlay (reads still
//! show them), and are reported (`History::set_unconfirmed`): they are what a resend must
//! bring back.
//!
//! [`audit`] looks again, every `replica.audit_interval`, at the newest transactions of the resend
//! window that were confirmed: one the ledger lacks now was lost after it was replicated
//! (a restore that kept the system identifier and timeline: only the data says so).

use std::collections::HashSet;

use redis::aio::MultiplexedConnection;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::{ReplicaConfig, ReplicaError, ReplicaMetrics};
use crate::events::EventSink;
use crate::lsn::Lsn;
use crate::overlay::scripts::{RECORDS_PER_CALL, REPLICATED, TXS_PER_CALL};

/// Transactions due by LSN looked up in the ledger per query.
pub const PAGE: usize = 500;

/// Most ledger queries per poll: up to 5,000 transactions confirmed per poll (as many as
/// the calls below mark), then the next poll goes on.
const PAGES_PER_POLL: usize = 10;

/// Most `replicated.lua` calls per poll.
const CALLS_PER_POLL: usize = 100;

/// How many of the newest window entries an audit looks at.
const AUDIT_SIZE: usize = 500;

/// An `XRANGE`/`XREVRANGE` reply: entry ids and their fields.
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// What one poll's confirmation found.
#[derive(Debug, Default)]
pub struct Confirmation {
    pub marked: u64,
    /// Due by LSN, not in the ledger.
    pub missing: Vec<String>,
}

/// Of `ids`, those the ledger on `pg` holds.
pub async fn in_ledger(
    pg: &mut PgConnection,
    config: &ReplicaConfig,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, ReplicaError> {
    let sql = format!(
        "SELECT transaction_id FROM \"{}\".applied_transaction WHERE transaction_id = ANY($1)",
        config.schema
    );
    let query = sqlx::query_scalar::<_, Uuid>(&sql).bind(ids).fetch_all(pg);
    let held = tokio::time::timeout(config.connect_timeout, query)
        .await
        .map_err(|_| ReplicaError::QueryTimeout(config.connect_timeout))??;
    Ok(held.into_iter().collect())
}

/// Confirms and marks what is due at `replay`.
pub async fn confirm(
    pg: &mut PgConnection,
    redis: &mut MultiplexedConnection,
    config: &ReplicaConfig,
    replay: Lsn,
    now: i64,
    metrics: &ReplicaMetrics,
    events: &EventSink,
) -> Result<Confirmation, ReplicaError> {
    let mut found = Confirmation::default();
    let mut offset = 0;
    let mut calls = 0;
    for _ in 0..PAGES_PER_POLL {
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(config.keys.forwarded())
            .arg("-inf")
            .arg(replay.score_floor())
            .arg("LIMIT")
            .arg(offset)
            .arg(PAGE)
            .query_async(redis)
            .await?;
        let ids: Vec<Uuid> = due.iter().filter_map(|id| id.parse().ok()).collect();
        let held = if ids.is_empty() {
            HashSet::new()
        } else {
            in_ledger(pg, config, &ids).await?
        };
        let (confirmed, missing): (Vec<&String>, Vec<&String>) = due
            .iter()
            .partition(|id| id.parse().is_ok_and(|id: Uuid| held.contains(&id)));
        offset += missing.len();
        found.missing.extend(missing.into_iter().cloned());
        let mut rest: &[&String] = &confirmed;
        while !rest.is_empty() && calls < CALLS_PER_POLL {
            let chunk = &rest[..rest.len().min(TXS_PER_CALL)];
            let (done, marked) = mark(redis, config, replay, now, chunk).await?;
            calls += 1;
            found.marked += marked.len() as u64;
            metrics.marked.inc_by(marked.len() as u64);
            if !marked.is_empty() {
                events.emit(
                    "tx.replicated",
                    serde_json::json!({ "replay_lsn": replay.to_string(), "transactions": marked }),
                );
            }
            rest = &rest[done.min(rest.len())..];
        }
        if due.len() < PAGE || calls >= CALLS_PER_POLL {
            break;
        }
    }
    Ok(found)
}

/// One bounded `replicated.lua` call for confirmed ids: how many of them it is done with
/// (from the first), and the ids it marked.
async fn mark(
    redis: &mut MultiplexedConnection,
    config: &ReplicaConfig,
    replay: Lsn,
    now: i64,
    ids: &[&String],
) -> Result<(usize, Vec<String>), ReplicaError> {
    let mut invocation = REPLICATED.prepare_invoke();
    invocation
        .key(config.keys.forwarded())
        .arg(replay.score_floor())
        .arg(now)
        .arg(config.keys.lifecycle_prefix())
        .arg(config.retention.as_secs().max(1))
        .arg(RECORDS_PER_CALL);
    for id in ids {
        invocation.arg(id.as_str());
    }
    let (done, marked): (usize, Vec<String>) =
        tokio::time::timeout(config.redis_timeout, invocation.invoke_async(redis))
            .await
            .map_err(|_| ReplicaError::RedisTimeout("marking replicated transactions"))??;
    Ok((done, marked))
}

/// The newest [`AUDIT_SIZE`] transactions of the resend window that are confirmed (no
/// longer in the forwarded set), looked up in the ledger: the ids it lacks.
pub async fn audit(
    pg: &mut PgConnection,
    redis: &mut MultiplexedConnection,
    config: &ReplicaConfig,
) -> Result<Vec<String>, ReplicaError> {
    let newest: Entries = redis::cmd("XREVRANGE")
        .arg(config.keys.sent())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(AUDIT_SIZE)
        .query_async(redis)
        .await?;
    let mut ids: Vec<String> = newest
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .into_iter()
                .find(|(name, _)| name == "tx")
                .and_then(|(_, value)| String::from_utf8(value).ok())
        })
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
        .arg(config.keys.forwarded())
        .arg(&ids)
        .query_async(redis)
        .await?;
    let confirmed: Vec<Uuid> = ids
        .iter()
        .zip(scores)
        .filter(|(_, score)| score.is_none())
        .filter_map(|(id, _)| id.parse().ok())
        .collect();
    if confirmed.is_empty() {
        return Ok(Vec::new());
    }
    let held = in_ledger(pg, config, &confirmed).await?;
    Ok(confirmed
        .into_iter()
        .filter(|id| !held.contains(id))
        .map(|id| id.to_string())
        .collect())
}
