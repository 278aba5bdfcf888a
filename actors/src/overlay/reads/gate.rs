//! The read source's gate: once it could not give a connection (down, refusing,
//! unreachable: the pool waited its acquire timeout, 2 s, or the connect failed), a query
//! on it first waits at most [`CLOSED_WAIT`] for a connection instead of that timeout.
//! Without one by then it fails as the waited one did, so each read answers as it does
//! with the source down (a list from the overlay alone, flagged; a record the overlay
//! does not hold, 503), only sooner. With one, the gate opens and the query runs as
//! usual, however long it takes: only the wait for a connection is cut, never a query of
//! a source that is back. Nothing waits for a probe, so a read right after the source's
//! return is served. A slow query (the statement timeout) does not close the gate: the
//! source answered.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sqlx::postgres::PgPool;

/// How long a query may wait for a connection while the gate is closed: one on this host
/// takes milliseconds once the source is back.
pub const CLOSED_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Queries wait [`CLOSED_WAIT`] at most for a connection.
    closed: AtomicBool,
    /// Queries given up for want of a connection while closed.
    cut: Counter,
}

impl Gate {
    /// Runs `query` on `pool`, first waiting at most [`CLOSED_WAIT`] for a connection
    /// while the gate is closed (the connection goes back to the pool, idle, for the
    /// query to take), and opens or closes the gate by what it got.
    pub(crate) async fn run<T>(
        &self,
        pool: &PgPool,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        if self.closed.load(Ordering::Acquire) {
            match tokio::time::timeout(CLOSED_WAIT, pool.acquire()).await {
                Ok(Ok(conn)) => drop(conn),
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    self.cut.inc();
                    return Err(sqlx::Error::PoolTimedOut);
                }
            }
        }
        let result = query.await;
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
            "Read-source queries given up after a short wait for a connection while the read source gave none",
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
    use sqlx::postgres::PgPoolOptions;

    fn refused() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    /// A pool of a source that is not there (nothing listens on port 1): its own wait for
    /// a connection is the service's 2 s.
    fn nowhere() -> PgPool {
        PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool")
    }

    #[tokio::test]
    async fn no_connection_closes_the_gate_and_any_answer_opens_it() {
        let (gate, pool) = (Gate::default(), nowhere());
        let slow = || async { Err::<(), _>(sqlx::Error::Protocol("canceling statement".into())) };
        assert!(gate.run(&pool, slow()).await.is_err());
        assert!(!gate.closed.load(Ordering::Acquire), "the source answered");
        // Open: the query runs as it is, whatever the pool (it answers here).
        assert_eq!(
            gate.run(&pool, async { Ok::<_, sqlx::Error>(7) })
                .await
                .ok(),
            Some(7)
        );
        assert!(gate
            .run(&pool, async { Err::<(), _>(refused()) })
            .await
            .is_err());
        assert!(gate.closed.load(Ordering::Acquire));
        // Closed: no connection within CLOSED_WAIT, and the query is not run.
        let started = std::time::Instant::now();
        let never = async { panic!("the query runs only with a connection") };
        let cut: Result<(), _> = gate.run(&pool, never).await;
        assert!(matches!(cut, Err(sqlx::Error::PoolTimedOut)), "{cut:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not the pool's own wait"
        );
        assert_eq!(gate.cut.get(), 1);
        assert!(gate.closed.load(Ordering::Acquire));
        // An answer opens it (here the gate's own bookkeeping; a connection that the pool
        // gives is tested against a real replica: tests/it/reads.rs).
        gate.note(&Ok::<(), sqlx::Error>(()));
        assert!(!gate.closed.load(Ordering::Acquire));
    }
}
