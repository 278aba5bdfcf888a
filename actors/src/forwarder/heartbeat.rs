//! The heartbeat: while the forwarder holds the lease and has committed nothing for
//! `forwarder.heartbeat_interval`, it calls `<schema>.heartbeat(site)` on the primary,
//! which upserts this site's row of `<schema>.heartbeat` with the primary's `now()`. The
//! row replicates like any commit, so the replica tracker can tell, with no client
//! writing, how old the newest news from the primary is (`replica/freshness/`).
//!
//! Guarantees:
//! - **never in a batch's way**: a beat is sent only on an idle turn (the stream read
//!   found nothing within its block), between batches, on the forwarder's own connection,
//!   bounded by `forwarder.connect_timeout`; a turn with transactions never beats;
//! - **low rate**: at most one beat per interval, none while batches commit (each commit
//!   is itself news the replica replays); 0 disables it;
//! - **a failed beat is a failed batch, except for its own objects**: no answer in time, a
//!   broken connection or an error about the server (the link is down: the next batch
//!   would fail the same way) fails the forwarder, which backs off and is healed as after
//!   a failed batch. An error of SQLSTATE class 42 (the function missing because
//!   `migrate` has not run, or `opsdb_forwarder` not granted it because roles.sql has
//!   not) is only logged: it says nothing about the link, and crashing on it would stop
//!   every batch for a missing heartbeat. The replica then reports `no_heartbeat` while
//!   idle, which is true.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgDatabaseError};
use tokio::time::Instant;

use super::{ForwardError, ForwarderConfig};

/// When the forwarder last told the primary something (a commit or a beat).
#[derive(Debug)]
pub struct Heartbeat {
    /// `None`: disabled.
    every: Option<Duration>,
    /// `None`: not since this forwarder started, so the first idle turn beats.
    last: Option<Instant>,
}

/// What a turn did about the heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Not due, or disabled.
    Skipped,
    /// The primary answered: the link works.
    Sent,
    /// The primary refused it for a reason of its own objects (logged).
    Refused,
}

impl Heartbeat {
    pub fn new(every: Duration) -> Self {
        Self {
            every: (!every.is_zero()).then_some(every),
            last: None,
        }
    }

    /// A batch committed: that is news enough for another interval.
    pub fn committed(&mut self) {
        self.last = Some(Instant::now());
    }

    fn due(&self, now: Instant) -> bool {
        match (self.every, self.last) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(every), Some(last)) => now.duration_since(last) >= every,
        }
    }

    /// On an idle turn: beats if due. See the module's documentation for what fails.
    pub async fn beat_if_due(
        &mut self,
        pg: &mut PgConnection,
        config: &ForwarderConfig,
    ) -> Result<Beat, ForwardError> {
        let now = Instant::now();
        if !self.due(now) {
            return Ok(Beat::Skipped);
        }
        let sql = format!("SELECT \"{}\".heartbeat($1)", config.schema);
        let call = sqlx::query(&sql).bind(&config.site).execute(pg);
        let result = tokio::time::timeout(config.connect_timeout, call)
            .await
            .map_err(|_| ForwardError::StatementTimeout(config.connect_timeout))?;
        // Due again only an interval later, whatever the answer: a refusal is not retried
        // (and logged) at every idle turn.
        self.last = Some(now);
        match result {
            Ok(_) => Ok(Beat::Sent),
            Err(e) if about_its_own_objects(&e) => {
                tracing::warn!(error = %e, "the primary refused the heartbeat; batches go on");
                Ok(Beat::Refused)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// SQLSTATE class 42 (syntax error or access rule violation): the function or the
/// right to call it is missing.
fn about_its_own_objects(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.try_downcast_ref::<PgDatabaseError>()
        .is_some_and(|pg| pg.code().starts_with("42"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_idle_turn_beats_then_one_per_interval_after_the_last_news() {
        let mut h = Heartbeat::new(Duration::from_secs(10));
        assert!(h.due(Instant::now()), "first idle turn");
        h.committed();
        assert!(!h.due(Instant::now()));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!h.due(Instant::now()));
        h.committed();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!h.due(Instant::now()), "a commit postpones the beat");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(h.due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_disables_it() {
        let h = Heartbeat::new(Duration::ZERO);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!h.due(Instant::now()));
    }

    #[test]
    fn only_errors_about_the_function_or_its_rights_are_let_pass() {
        assert!(!about_its_own_objects(&sqlx::Error::PoolTimedOut));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!about_its_own_objects(&sqlx::Error::Io(io)));
    }
}
