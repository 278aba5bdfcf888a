//! Errors that repeat for one transaction: counted across restarts, and after
//! `forwarder.max_attempts` the transaction is dead-lettered instead of crash-looping.
//!
//! The batch function names the transaction an error was raised for (its batch index, in
//! the error's DETAIL: `apply_batch: batch index N`, see `opsdb_api.apply_rows` in
//! `migrations/20261206000001_opsdb_api_set_apply.sql`; set mode raises the classes 40, 53,
//! 55, 57, 58 and XX at once with the index of its run's first transaction). An error
//! that says something about the environment (the connection, the server, locks, rights,
//! a schema not migrated) is not counted: it would fail any transaction, and waiting it
//! out is right. Any other one is counted against that transaction; once it has failed
//! `max_attempts` times, the next batch sends it with a reject marker and the primary
//! answers `dead` (or `skipped`, had an earlier attempt committed it after all).
//!
//! A batch that fails without naming a transaction (a [`Stall`]: a timeout, a connection
//! dropped mid-batch) is split on the next attempts (see `split`), down to a single
//! transaction. A single transaction the primary cancels at its `statement_timeout` is
//! counted like any culprit: after `max_attempts` such timeouts it is dead-lettered with
//! that reason. Lock waits end earlier (the session's `lock_timeout` is half the statement
//! timeout, SQLSTATE 55P03, about the environment), so a lock held by someone else is
//! waited out, never blamed on the transaction that waits for it.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::postgres::PgDatabaseError;
use uuid::Uuid;

use super::split::{Split, StreamPos};
use super::ForwardError;

/// SQLSTATE classes about the environment, never blamed on a transaction: connection (08),
/// transaction state (25), authorization (28), catalog and schema names (3D, 3F),
/// rollbacks such as serialization failures and deadlocks (40), syntax and access rules
/// such as a missing table or right (42: the primary's schema or grants, not the data),
/// resources (53), object state and locks (55), operator intervention and timeouts (57),
/// system (58), configuration (F0), foreign data (HV), internal (XX).
const ENVIRONMENTAL: [&str; 14] = [
    "08", "25", "28", "3D", "3F", "40", "42", "53", "55", "57", "58", "F0", "HV", "XX",
];

/// The marker the batch function puts on the last line of the DETAIL of an error it
/// raises again.
const INDEX_MARKER: &str = "apply_batch: batch index ";

/// More than this many counted transactions and the oldest counts are forgotten (they
/// only start again from zero): the map stays small whatever happens.
const MAX_TRACKED: usize = 1024;

pub fn is_environmental(sqlstate: &str) -> bool {
    ENVIRONMENTAL
        .iter()
        .any(|class| sqlstate.starts_with(class))
}

/// The error a transaction failed with, as the primary said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

/// The batch index and error of a failed batch, when the batch function named the
/// transaction and the error is not about the environment.
pub fn culprit(err: &ForwardError) -> Option<(usize, Failure)> {
    let ForwardError::Database(sqlx::Error::Database(db)) = err else {
        return None;
    };
    let pg = db.try_downcast_ref::<PgDatabaseError>()?;
    let sqlstate = pg.code();
    if is_environmental(sqlstate) {
        return None;
    }
    let index = pg
        .detail()?
        .lines()
        .last()?
        .strip_prefix(INDEX_MARKER)?
        .parse()
        .ok()?;
    Some((
        index,
        Failure {
            sqlstate: sqlstate.to_owned(),
            message: pg.message().to_owned(),
        },
    ))
}

/// How a batch failed without naming a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// The primary cancelled the batch at its `statement_timeout` (57014): it answered,
    /// the batch took too long.
    ServerTimeout,
    /// No answer within the forwarder's own bound: a slow batch or a stalled link.
    ClientTimeout,
    /// The connection broke after the batch was sent, or the server shut down under it.
    Dropped,
}

/// SQLSTATE `query_canceled`: a statement timeout, or a cancel request.
const QUERY_CANCELED: &str = "57014";

/// Whether a failed batch is a [`Stall`], and which.
pub fn stall(err: &ForwardError) -> Option<Stall> {
    match err {
        ForwardError::StatementTimeout(_) => Some(Stall::ClientTimeout),
        ForwardError::Database(sqlx::Error::Database(db)) => {
            let pg = db.try_downcast_ref::<PgDatabaseError>()?;
            match pg.code() {
                // Only the statement timeout's cancel is the batch's own doing; a cancel
                // by an operator is treated like a dropped connection.
                QUERY_CANCELED if pg.message().contains("statement timeout") => {
                    Some(Stall::ServerTimeout)
                }
                code if code.starts_with("57") => Some(Stall::Dropped),
                _ => None,
            }
        }
        e if e.is_link() => Some(Stall::Dropped),
        _ => None,
    }
}

/// The failure a lone transaction is counted with when the primary cancels it at its
/// statement timeout.
pub fn timed_out(timeout: std::time::Duration) -> Failure {
    Failure {
        sqlstate: QUERY_CANCELED.to_owned(),
        message: format!("did not finish within forwarder.statement_timeout ({timeout:?})"),
    }
}

/// What the forwarder learned about failing transactions and batches, shared by its
/// incarnations: failures counted per transaction, and the batch limit after stalls.
#[derive(Debug, Default)]
pub struct Isolation {
    counts: Mutex<HashMap<Uuid, (Failure, u32)>>,
    split: Mutex<Option<Split>>,
}

impl Isolation {
    /// Counts one failure of `tx`; returns how many it has had.
    pub fn fail(&self, tx: Uuid, failure: Failure) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= MAX_TRACKED && !counts.contains_key(&tx) {
            counts.clear();
        }
        let entry = counts.entry(tx).or_insert((failure.clone(), 0));
        entry.0 = failure;
        entry.1 += 1;
        entry.1
    }

    /// The failure `tx` is to be dead-lettered with, once it has failed `max_attempts`
    /// times.
    pub fn verdict(&self, tx: Uuid, max_attempts: u32) -> Option<(Failure, u32)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&tx).filter(|(_, n)| *n >= max_attempts).cloned()
    }

    /// Most transactions the next batch may hold, while batches are split after stalls.
    pub fn batch_limit(&self) -> Option<usize> {
        self.split_state().map(|s| s.limit)
    }

    /// A batch of `len` transactions whose last stream entry is `last` stalled.
    pub fn stalled(&self, len: usize, last: &str) {
        let Some(last) = StreamPos::parse(last) else {
            return;
        };
        let mut split = self.split.lock().unwrap_or_else(|e| e.into_inner());
        *split = Some(Split::after_stall(*split, len, last));
    }

    /// A batch whose last stream entry is `last` committed.
    pub fn committed(&self, last: &str) {
        let mut split = self.split.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(_), Some(last)) = (*split, StreamPos::parse(last)) {
            *split = Split::after_commit(*split, last);
        }
    }

    fn split_state(&self) -> Option<Split> {
        *self.split.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the counts of transactions that are settled.
    pub fn settled(&self, txs: impl IntoIterator<Item = Uuid>) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.is_empty() {
            return;
        }
        for tx in txs {
            counts.remove(&tx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(state: &str) -> Failure {
        Failure {
            sqlstate: state.into(),
            message: "no".into(),
        }
    }

    #[test]
    fn environment_classes_are_never_blamed_on_a_transaction() {
        for state in [
            "08006", "40001", "40P01", "42501", "42P01", "53100", "57014", "XX000",
        ] {
            assert!(is_environmental(state), "{state}");
        }
        for state in ["P0001", "54000", "21000", "2F005", "0A000"] {
            assert!(!is_environmental(state), "{state}");
        }
    }

    #[test]
    fn a_transaction_is_condemned_after_max_attempts_and_forgotten_once_settled() {
        let isolation = Isolation::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(isolation.fail(a, failure("P0001")), 1);
        assert_eq!(isolation.verdict(a, 2), None);
        assert_eq!(isolation.fail(a, failure("P0001")), 2);
        assert_eq!(isolation.verdict(a, 2), Some((failure("P0001"), 2)));
        assert_eq!(isolation.verdict(b, 2), None);
        isolation.settled([a]);
        assert_eq!(isolation.verdict(a, 1), None);
    }
}
