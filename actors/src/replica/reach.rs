//! Is the replica answering? The replica tracker's heal probe (see `supervisor/heal.rs`).
//!
//! The probe does what the tracker's first poll does: it connects as the tracker's role and
//! reads the replay position, then closes. It says `true` only when that poll would
//! succeed, which a lighter check could not promise: a PostgreSQL that is starting up
//! answers the forwarder's one-byte `SSLRequest` probe but refuses sessions ("the database
//! system is starting up"), and a standby that has replayed nothing yet answers NULL. A
//! restart on such an answer would fail at once, and the heal watch counts that early
//! restart as spent: the next one would sit out a whole capped backoff.
//!
//! Why a session is fine here when the primary's probe avoids one: the replica is local
//! (no WAN in between), and while it is down each probe is a refused or unanswered
//! connect that leaves nothing in its logs; the first probe that succeeds ends the probing.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection};

use super::{replay_position, ReplicaConfig};
use crate::supervisor::heal::Probe;

/// How often a backing-off tracker probes the replica: marking resumes within about this
/// long (plus two connects and one poll) of the replica answering again. Shorter than the
/// primary's 250 ms: a probe of a local server that is down is a refused connect.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);

/// The read source's probe; each check is bounded by `timeout`.
pub fn probe(config: &ReplicaConfig, timeout: Duration) -> Probe {
    let config = Arc::new(config.clone());
    Probe {
        check: Arc::new(move || {
            let config = Arc::clone(&config);
            Box::pin(async move {
                tokio::time::timeout(timeout, answers(&config))
                    .await
                    .unwrap_or(false)
            })
        }),
        every: PROBE_EVERY,
    }
}

/// A session opens and the replay position reads as an LSN.
async fn answers(config: &ReplicaConfig) -> bool {
    let Ok(options) = config.source.options() else {
        return false;
    };
    let options = options
        .application_name("ops-db-api replica probe")
        .log_statements(tracing::log::LevelFilter::Trace);
    let Ok(mut pg) = options.connect().await else {
        return false;
    };
    let replayed = replay_position(&mut pg, config).await.is_ok();
    let _ = pg.close().await;
    replayed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::Keys;
    use crate::pg::PgTarget;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn config(port: u16) -> ReplicaConfig {
        ReplicaConfig {
            source: PgTarget::plain(format!("postgres://u@127.0.0.1:{port}/db")),
            redis_url: "redis://127.0.0.1:1".into(),
            keys: Keys::new("t"),
            schema: "opsdb_api".into(),
            poll_interval: Duration::from_millis(100),
            fast_poll_interval: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(1),
            redis_timeout: Duration::from_secs(1),
            retention: Duration::from_secs(1),
            audit_interval: Duration::from_secs(60),
            freshness: crate::replica::FreshnessConfig {
                schema: "opsdb_api".into(),
                site: "t".into(),
                max_staleness: Duration::from_secs(60),
                heartbeat: true,
            },
        }
    }

    async fn check(port: u16) -> bool {
        (probe(&config(port), Duration::from_secs(1)).check)().await
    }

    #[tokio::test]
    async fn a_refused_connect_is_down() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!check(port).await);
    }

    /// What the forwarder's probe takes for reachable (an answer to the `SSLRequest`) is not
    /// enough here: a server starting up answers it too, then refuses the session.
    #[tokio::test]
    async fn a_server_that_answers_the_ssl_request_but_refuses_the_session_is_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut request = [0u8; 8];
                if s.read_exact(&mut request).await.is_ok() {
                    let _ = s.write_all(b"N").await;
                }
                // Then the startup message is answered by closing, as a refusal ends.
                let mut startup = [0u8; 256];
                let _ = s.read(&mut startup).await;
            }
        });
        assert!(!check(port).await);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_down_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let p = probe(&config(port), Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert!(!(p.check)().await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
