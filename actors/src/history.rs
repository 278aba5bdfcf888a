//! Whether the primary and the replica still hold the history the service forwarded.
//!
//! A commit LSN says where a transaction is in one server's WAL, not that a server holds
//! it: after Cologne fails over to a standby that missed the last commits, or is restored
//! from a backup, the replica (re-pointed or re-cloned) passes those LSNs on another
//! history. So the service watches three things, and reports each in `/health`
//! (`history`) and as a `history.*` event:
//!
//! - **Identity.** The forwarder reads the primary's system identifier and timeline at
//!   each connect, the replica tracker the replica's at each connect; each is kept in
//!   Redis (`Keys::history`), so a change is seen across restarts of the service too. A
//!   change (a promotion: a new timeline; a new cluster: a new system identifier) is kept
//!   as an unacknowledged change until a resend (or `POST /admin/history/clear`) clears it.
//! - **Unconfirmed transactions.** A transaction becomes `replicated` only when the
//!   replica's ledger holds it (`replica::confirm`); one whose commit LSN the replica has
//!   passed and that its ledger lacks is counted here, and stays `forwarded`.
//! - **Lost after replication.** Every minute the newest transactions of the resend window
//!   that were confirmed are looked up in the replica's ledger again; what it lacks now
//!   was lost by a restore (same system identifier and timeline: only the data says so).
//!
//! None of this stops ingest or forwarding: it tells the operator to run the runbook
//! (`docs/OPERATIONS.md`, "Cologne failed over or was restored") and `ops-db-api resend`.

use std::sync::Mutex;

use futures::TryStreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::events::EventSink;
use crate::overlay::Keys;

/// The primary and the replica: which side an identity or a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Primary,
    Replica,
}

impl Side {
    fn field(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Replica => "replica",
        }
    }

    fn change_field(self) -> &'static str {
        match self {
            Side::Primary => "primary_change",
            Side::Replica => "replica_change",
        }
    }
}

/// A PostgreSQL cluster's identity: its system identifier (from `initdb`; kept by a base
/// backup and by its standbys) and its timeline (a new one at each promotion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Identity {
    pub system_identifier: String,
    pub timeline: i64,
}

/// One query for either side: on a standby the timeline it receives (or, where that is
/// hidden from the role, its last restartpoint's), on a primary the one it writes.
const IDENTITY_SQL: &str = "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
     CASE WHEN pg_is_in_recovery() \
     THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
                   (SELECT timeline_id FROM pg_control_checkpoint()))::bigint \
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END, \
     current_setting('standard_conforming_strings') = 'on'";

/// Reads the identity of the server `pg` is connected to.
pub async fn read_identity(pg: &mut PgConnection) -> Result<Identity, sqlx::Error> {
    Ok(read_server(pg).await?.0)
}

/// Reads the identity of the server `pg` is connected to and whether its
/// `standard_conforming_strings` is on, in one simple-protocol round trip (a prepared
/// statement costs two on a new connection: over the WAN, each is RTT after a heal).
pub async fn read_server(pg: &mut PgConnection) -> Result<(Identity, bool), sqlx::Error> {
    let mut rows = sqlx::raw_sql(IDENTITY_SQL).fetch(&mut *pg);
    let mut first = None;
    while let Some(row) = rows.try_next().await? {
        first.get_or_insert(row);
    }
    drop(rows);
    let row = first.ok_or(sqlx::Error::RowNotFound)?;
    let system_identifier: Option<String> = row.try_get(0)?;
    let timeline: Option<i64> = row.try_get(1)?;
    let standard_strings: bool = row.try_get(2)?;
    let identity = Identity {
        system_identifier: system_identifier.unwrap_or_default(),
        timeline: timeline.unwrap_or(0),
    };
    Ok((identity, standard_strings))
}

/// An identity as recorded, with when it was first seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Seen {
    #[serde(flatten)]
    pub identity: Identity,
    /// RFC 3339.
    pub since: String,
}

/// A change of identity not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    pub side: Side,
    pub from: Identity,
    pub to: Identity,
    /// RFC 3339.
    pub at: String,
}

/// Transactions the replica's ledger lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gap {
    /// How many of those looked at the ledger lacks.
    pub missing: u64,
    /// Up to ten of their ids.
    pub sample: Vec<String>,
    /// RFC 3339: since when it has been seen (the first look that found it).
    pub since: String,
}

/// What `/health` shows as `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryView {
    /// `false` while a change or a gap below is reported: run the failover runbook.
    pub consistent: bool,
    pub primary: Option<Seen>,
    pub replica: Option<Seen>,
    /// Changes of identity not yet acknowledged (by a resend or `POST /admin/history/clear`).
    pub changes: Vec<Change>,
    /// Forwarded transactions whose commit LSN the replica has passed but that its ledger
    /// lacks: they stay `forwarded` (and in the overlay).
    pub unconfirmed: Option<Gap>,
    /// Transactions confirmed replicated earlier that the replica's ledger lacks now (the
    /// newest of the resend window, looked at every minute).
    pub lost: Option<Gap>,
}

/// The shared state behind [`HistoryView`]: written by the forwarder (the primary's
/// identity), the replica tracker (the replica's, the gaps) and a resend (clearing).
#[derive(Debug, Default)]
pub struct History {
    view: Mutex<HistoryView>,
}

impl History {
    pub fn view(&self) -> HistoryView {
        let mut view = self.lock().clone();
        view.consistent =
            view.changes.is_empty() && view.unconfirmed.is_none() && view.lost.is_none();
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HistoryView> {
        self.view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `identity` as `side`'s, comparing it with the one Redis holds: a change is
    /// kept in Redis and in the view, logged and announced (`history.changed`). Returns
    /// the change, if any.
    pub async fn record(
        &self,
        redis: &mut MultiplexedConnection,
        keys: &Keys,
        side: Side,
        identity: Identity,
        events: &EventSink,
    ) -> Result<Option<Change>, redis::RedisError> {
        let (stored, changes): (Option<String>, Vec<Option<String>>) = redis::pipe()
            .cmd("HGET")
            .arg(keys.history())
            .arg(side.field())
            .cmd("HMGET")
            .arg(keys.history())
            .arg(Side::Primary.change_field())
            .arg(Side::Replica.change_field())
            .query_async(redis)
            .await?;
        let stored: Option<Seen> = stored.and_then(|s| serde_json::from_str(&s).ok());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (seen, change) = match stored {
            Some(seen) if seen.identity == identity => (seen, None),
            previous => {
                let seen = Seen {
                    identity: identity.clone(),
                    since: now.clone(),
                };
                let change = previous.map(|previous| Change {
                    side,
                    from: previous.identity,
                    to: identity,
                    at: now,
                });
                let mut pipe = redis::pipe();
                pipe.cmd("HSET")
                    .arg(keys.history())
                    .arg(side.field())
                    .arg(to_json(&seen));
                if let Some(change) = &change {
                    pipe.cmd("HSET")
                        .arg(keys.history())
                        .arg(side.change_field())
                        .arg(to_json(change));
                }
                let () = pipe.query_async(redis).await?;
                (seen, change)
            }
        };
        let mut known: Vec<Change> = changes
            .into_iter()
            .flatten()
            .filter_map(|c| serde_json::from_str(&c).ok())
            .collect();
        if let Some(change) = &change {
            tracing::error!(
                side = side.field(),
                from = ?change.from,
                to = ?change.to,
                "the {} is another server or timeline than before: it may lack forwarded \
                 transactions; see docs/OPERATIONS.md (Cologne failed over or was restored)",
                side.field()
            );
            events.emit("history.changed", serde_json::json!(change));
            known.retain(|c| c.side != side);
            known.push(change.clone());
        }
        let mut view = self.lock();
        match side {
            Side::Primary => view.primary = Some(seen),
            Side::Replica => view.replica = Some(seen),
        }
        view.changes = known;
        Ok(change)
    }

    /// Forgets the unacknowledged changes, in Redis and here (after a resend, or an
    /// operator's `POST /admin/history/clear`).
    pub async fn clear_changes(
        &self,
        redis: &mut MultiplexedConnection,
        keys: &Keys,
    ) -> Result<(), redis::RedisError> {
        let () = redis::cmd("HDEL")
            .arg(keys.history())
            .arg(Side::Primary.change_field())
            .arg(Side::Replica.change_field())
            .query_async(redis)
            .await?;
        self.lock().changes.clear();
        Ok(())
    }

    /// The replica tracker's latest look at unconfirmed transactions: `missing` ids (all
    /// of those it looked at that the ledger lacks; empty: none).
    pub fn set_unconfirmed(&self, missing: &[String], events: &EventSink) {
        let mut view = self.lock();
        update_gap(&mut view.unconfirmed, missing, "unconfirmed", events);
    }

    /// The replica tracker's latest audit of confirmed transactions.
    pub fn set_lost(&self, missing: &[String], events: &EventSink) {
        let mut view = self.lock();
        update_gap(&mut view.lost, missing, "lost", events);
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Sets `gap` from `missing`, announcing it when it opens (`history.ledger_gap`) and when
/// it closes (`history.ledger_gap_closed`).
fn update_gap(gap: &mut Option<Gap>, missing: &[String], kind: &str, events: &EventSink) {
    let sample: Vec<String> = missing.iter().take(10).cloned().collect();
    match (gap.as_mut(), missing.is_empty()) {
        (None, true) => {}
        (Some(_), true) => {
            tracing::info!(kind, "the replica's ledger holds every transaction again");
            events.emit(
                "history.ledger_gap_closed",
                serde_json::json!({ "kind": kind }),
            );
            *gap = None;
        }
        (Some(open), false) => {
            open.missing = missing.len() as u64;
            open.sample = sample;
        }
        (None, false) => {
            let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            tracing::error!(
                kind,
                missing = missing.len(),
                sample = ?sample,
                "the replica's ledger lacks forwarded transactions: the primary may have lost \
                 them (failover or restore); see docs/OPERATIONS.md and `ops-db-api resend`"
            );
            let open = Gap {
                missing: missing.len() as u64,
                sample,
                since,
            };
            events.emit(
                "history.ledger_gap",
                serde_json::json!({ "kind": kind, "missing": open.missing, "sample": open.sample }),
            );
            *gap = Some(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> EventSink {
        EventSink::new(100)
    }

    #[test]
    fn a_gap_opens_updates_and_closes_with_one_event_each_way() {
        let (history, events) = (History::default(), sink());
        assert!(history.view().consistent);
        history.set_unconfirmed(&["a".into(), "b".into()], &events);
        let view = history.view();
        assert!(!view.consistent);
        assert_eq!(view.unconfirmed.as_ref().map(|g| g.missing), Some(2));
        history.set_unconfirmed(&["b".into()], &events);
        assert_eq!(
            history.view().unconfirmed.map(|g| g.sample),
            Some(vec!["b".to_owned()])
        );
        history.set_unconfirmed(&[], &events);
        assert!(history.view().consistent);
        let kinds: Vec<String> = events
            .peek(100)
            .iter()
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .filter_map(|e| e["type"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(kinds, ["history.ledger_gap", "history.ledger_gap_closed"]);
    }

    #[test]
    fn the_sample_is_bounded() {
        let (history, events) = (History::default(), sink());
        let missing: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        history.set_lost(&missing, &events);
        let lost = history.view().lost.expect("a gap");
        assert_eq!((lost.missing, lost.sample.len()), (1000, 10));
    }
}
