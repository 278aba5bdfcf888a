//! The read source's gate: once it could not give a connection (down, refusing,
//! unreachable: the pool waited its acquire timeout, 2 s, or the connect failed), reads
//! give each query on it at most [`CLOSED_WAIT`] instead of that timeout. A query that
//! runs out of it fails as the waited one did, so each read answers as it does with the
//! source down (a list from the overlay alone, flagged; a record the overlay does not
//! hold, 503), only sooner. The first query that gets an answer opens the gate again:
//! nothing waits for a probe, and a read right after the source's return is served. A
//! slow query (the statement timeout) does not close the gate: the source answered.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// How long a query may wait for the source while the gate is closed: a connection on
/// this host takes milliseconds once the source is back.
pub const CLOSED_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Queries get [`CLOSED_WAIT`] at most.
    closed: AtomicBool,
    /// Queries cut short while closed.
    cut: Counter,
}

impl Gate {
    /// Runs `query` (bounded by [`CLOSED_WAIT`] while the gate is closed) and opens or
    /// closes the gate by what it got.
    pub(crate) async fn run<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let result = if self.closed.load(Ordering::Acquire) {
            match tokio::time::timeout(CLOSED_WAIT, query).await {
                Ok(result) => result,
                Err(_) => {
                    self.cut.inc();
                    return Err(sqlx::Error::PoolTimedOut);
                }
            }
        } else {
            query.await
        };
        self.note(&result);
        result
    }

    fn note<T>(&self, result: &Result<T, sqlx::Error>) {
        let closed = matches!(result, Err(err) if no_connection(err));
        let was = self.closed.swap(closed, Ordering::AcqRel);
        if closed && !was {
            tracing::warn!("the read source gave no connection: reads wait for it at most {CLOSED_WAIT:?} until it does");
        } else if was && !closed {
            tracing::info!("the read source answers again");
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "opsdb_read_source_cut_short",
            "Read-source queries given up after a short wait while the read source gave no connection",
            self.cut.clone(),
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

    fn refused() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test]
    async fn no_connection_closes_the_gate_and_any_answer_opens_it() {
        let gate = Gate::default();
        let slow = || async { Err::<(), _>(sqlx::Error::Protocol("canceling statement".into())) };
        assert!(gate.run(slow()).await.is_err());
        assert!(!gate.closed.load(Ordering::Acquire), "the source answered");
        assert!(gate.run(async { Err::<(), _>(refused()) }).await.is_err());
        assert!(gate.closed.load(Ordering::Acquire));
        // Closed: a query that would wait longer is cut short.
        let hang = async {
            tokio::time::sleep(CLOSED_WAIT * 4).await;
            Ok::<_, sqlx::Error>(1)
        };
        assert!(matches!(
            gate.run(hang).await,
            Err(sqlx::Error::PoolTimedOut)
        ));
        assert_eq!(gate.cut.get(), 1);
        assert!(gate.closed.load(Ordering::Acquire));
        // One that answers in time opens it.
        assert_eq!(
            gate.run(async { Ok::<_, sqlx::Error>(7) }).await.ok(),
            Some(7)
        );
        assert!(!gate.closed.load(Ordering::Acquire));
    }
}
