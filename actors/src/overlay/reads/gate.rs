//! The read source's gate: once it could not give a connection (down, refusing,
//! unreachable: the pool waited its acquire timeout, 2 s, or the connect failed), reads
//! skip it for [`DOWN_FOR`] instead of each waiting that timeout again. A skipped query
//! fails as the waited one did, so each read answers as it does with the source down (a
//! list from the overlay alone, flagged; a record the overlay does not hold, 503), only
//! at once. Then the next read tries the source again. A slow query (the statement
//! timeout) does not close the gate: the source answered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// How long reads skip the source after it failed to give a connection.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Until when reads skip the source.
    closed_until: Mutex<Option<Instant>>,
    /// Queries skipped.
    skipped: Counter,
}

impl Gate {
    /// `Err` (the pool's own timeout error) while the gate is closed.
    pub(crate) fn check(&self) -> Result<(), sqlx::Error> {
        let closed = self
            .closed_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until);
        if closed {
            self.skipped.inc();
            return Err(sqlx::Error::PoolTimedOut);
        }
        Ok(())
    }

    /// Passes `result` on, closing the gate if it says the source gave no connection.
    pub(crate) fn note<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(err) = &result {
            if no_connection(err) {
                *self
                    .closed_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + DOWN_FOR);
            }
        }
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
        // Reopened once DOWN_FOR has passed.
        *gate.closed_until.lock().unwrap() = Some(Instant::now());
        assert!(gate.check().is_ok());
    }
}
