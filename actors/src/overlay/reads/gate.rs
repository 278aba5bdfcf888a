//! The read source's gate: once it could not give a connection (down, refusing,
//! unreachable: the pool waited its acquire timeout, 2 s, or the connect failed), reads
//! skip it for [`DOWN_FOR`] instead of each waiting that timeout again. A skipped query
//! fails as the waited one did, so each read answers as it does with the source down (a
//! list from the overlay alone, flagged; a record the overlay does not hold, 503), only
//! at once. Then one read tries the source again (the others still skip it until that
//! one has its answer, for at most [`PROBE_FOR`]): an answer opens the gate, no
//! connection closes it for [`DOWN_FOR`] more. A slow query (the statement timeout) does
//! not close the gate: the source answered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// How long reads skip the source after it failed to give a connection.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// How long the one read that tries the source again has before the others try too: the
/// read pool's acquire timeout (`Reads::new`), and a margin.
pub const PROBE_FOR: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Until when reads skip the source.
    closed_until: Mutex<Option<Instant>>,
    /// Queries skipped.
    skipped: Counter,
}

impl Gate {
    /// `Err` (the pool's own timeout error) while the gate is closed. The first caller
    /// after it was closed long enough goes through, and the gate stays closed to the
    /// others while it tries.
    pub(crate) fn check(&self) -> Result<(), sqlx::Error> {
        let mut closed_until = self
            .closed_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match *closed_until {
            Some(until) if now < until => {
                self.skipped.inc();
                Err(sqlx::Error::PoolTimedOut)
            }
            Some(_) => {
                *closed_until = Some(now + PROBE_FOR);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Passes `result` on, closing the gate if it says the source gave no connection and
    /// opening it otherwise (the source answered, if only with an error of the query).
    pub(crate) fn note<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let closed = match &result {
            Err(err) if no_connection(err) => Some(Instant::now() + DOWN_FOR),
            _ => None,
        };
        *self
            .closed_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = closed;
        result
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "opsdb_read_source_skipped",
            "Read-source queries skipped for a while after the read source gave no connection",
            self.skipped.clone(),
        );
    }
}

/// The source gave no connection: the pool timed out waiting for one, or connecting
/// failed (refused, reset, TLS).
fn no_connection(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_connection_closes_the_gate_and_an_answer_or_a_slow_query_does_not() {
        let gate = Gate::default();
        assert!(gate.check().is_ok());
        let slow: Result<(), _> = Err(sqlx::Error::Protocol("canceling statement".into()));
        assert!(gate.note(slow).is_err());
        assert!(gate.check().is_ok(), "the source answered");
        assert_eq!(gate.note(Ok(7)).ok(), Some(7));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(gate.note::<()>(Err(sqlx::Error::Io(refused))).is_err());
        assert!(matches!(gate.check(), Err(sqlx::Error::PoolTimedOut)));
        assert_eq!(gate.skipped.get(), 1);
        // Once DOWN_FOR has passed, one read tries; the others skip while it does.
        *gate.closed_until.lock().unwrap() = Some(Instant::now());
        assert!(gate.check().is_ok(), "the one that tries");
        assert!(gate.check().is_err(), "another, meanwhile");
        assert_eq!(gate.note(Ok(())).ok(), Some(()));
        assert!(gate.check().is_ok(), "the source answered: open");
        assert!(gate.check().is_ok());
        assert_eq!(gate.skipped.get(), 2);
    }
}
