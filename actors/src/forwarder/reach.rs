//! Is the primary reachable? The forwarder's heal probe (see `supervisor/heal.rs`).
//!
//! One TCP connect to the primary's host and port, one PostgreSQL `SSLRequest` (8 bytes),
//! one byte back (`S` or `N`), then close: no authentication, no session, nothing the
//! primary logs. A bare TCP connect would not do: a link that fails past the first hop
//! (a proxy, a tunnel end, a NAT) accepts connections and closes them, and only an answer
//! from PostgreSQL itself shows the whole path is back.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::supervisor::heal::Probe;

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How often a backing-off forwarder probes the primary.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The primary's probe, or `None` when its URL names no TCP host (a Unix socket: no WAN
/// between, nothing to detect).
pub fn probe(primary_url: &str, timeout: Duration) -> Option<Probe> {
    let options: PgConnectOptions = primary_url.parse().ok()?;
    if options.get_socket().is_some() {
        return None;
    }
    let host = options.get_host().to_owned();
    let port = options.get_port();
    let host: Arc<str> = host.into();
    Some(Probe {
        check: Arc::new(move || {
            let host = Arc::clone(&host);
            Box::pin(async move {
                tokio::time::timeout(timeout, answers(&host, port))
                    .await
                    .unwrap_or(false)
            })
        }),
        every: PROBE_EVERY,
    })
}

async fn answers(host: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)).await else {
        return false;
    };
    if stream.write_all(&SSL_REQUEST).await.is_err() {
        return false;
    }
    let mut reply = [0u8; 1];
    matches!(stream.read(&mut reply).await, Ok(1) if matches!(reply[0], b'S' | b'N'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(reply: Option<u8>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut req = [0u8; 8];
                let _ = s.read_exact(&mut req).await;
                if let Some(b) = reply {
                    let _ = s.write_all(&[b]).await;
                }
                // `None`: close at once, as a broken link's far hop does.
            }
        });
        port
    }

    async fn check(port: u16) -> bool {
        let p = probe(
            &format!("postgres://u@127.0.0.1:{port}/db"),
            Duration::from_secs(1),
        )
        .unwrap();
        (p.check)().await
    }

    #[tokio::test]
    async fn only_a_postgres_answer_counts_as_reachable() {
        assert!(check(server(Some(b'N')).await).await);
        assert!(check(server(Some(b'S')).await).await);
        assert!(!check(server(None).await).await, "accepted and closed");
        assert!(!check(server(Some(b'X')).await).await, "not postgres");
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!check(port).await, "refused");
    }

    #[test]
    fn a_unix_socket_primary_has_no_probe() {
        assert!(probe(
            "postgres://u@%2Frun%2Fpostgresql/db",
            Duration::from_secs(1)
        )
        .is_none());
        assert!(probe("not a url", Duration::from_secs(1)).is_none());
    }
}
