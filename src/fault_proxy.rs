//! A userspace TCP fault proxy on loopback. It stands in for the 11,000 km WAN link
//! between the forwarder and the PostgreSQL primary in tests and in `dev`, where kernel
//! traffic shaping is unavailable: [`FaultProxy::set_delay`], [`FaultProxy::cut`],
//! [`FaultProxy::blackhole`], [`FaultProxy::heal`].
//!
//! Guarantees:
//!
//! - Each accepted connection runs in its own task, so connections never wait on each
//!   other; inside it each direction has a reader and a writer running concurrently.
//! - Within a direction bytes arrive unaltered and in order. A chunk read at time `t` is
//!   written at `t + delay`, with the delay in force when it was read; a new delay thus
//!   applies to open connections too. The reader keeps reading while the writer waits, so
//!   delay adds latency, not a throughput limit: up to [`IN_FLIGHT_CHUNKS`] chunks of up
//!   to [`CHUNK_BYTES`] are in flight per direction, beyond which the proxy stops reading
//!   and TCP backpressure reaches the sender.
//! - A half-close propagates: when one side shuts down its write half, the other side's
//!   write half is shut down after the delay, once every earlier byte is written. An
//!   error on either side closes both sides of that connection.
//! - [`FaultProxy::cut`] closes every open connection at once (bytes in flight are
//!   dropped); until [`FaultProxy::heal`], new connections are accepted and closed.
//! - [`FaultProxy::blackhole`]: nothing more is forwarded on any connection and none is
//!   closed; new connections are accepted and held without connecting upstream. Peers see
//!   a stall, never an error.
//! - [`FaultProxy::heal`] after a blackhole closes every connection it held, dropping the
//!   held bytes; new connections are forwarded normally. A held connection is in a state
//!   its client cannot know: it has usually timed out already, or would wait until it
//!   does. Closing gives it a prompt error to reconnect on, and keeps a request it may
//!   have given up on (and retried elsewhere) from reaching the primary late. Resuming
//!   instead would hide the fault from clients without timeouts, which tests should see.
//! - The delay survives cut, blackhole and heal.
//! - [`FaultProxy::stop`], or dropping the last clone, ends the accept loop and closes
//!   every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Largest read, hence largest chunk, per direction.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks a direction holds while they wait out the delay. Bounded so that a fast sender
/// meets backpressure instead of growing our memory; large enough that the delay does not
/// cap throughput: 1024 chunks per 125 ms is 8,192 writes or up to 128 MiB a second.
pub const IN_FLIGHT_CHUNKS: usize = 1024;

/// What the link does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Normal,
    Cut,
    Blackhole,
}

/// The proxy's setting, as an admin endpoint shows it (`{"link": "cut", "delay": "125ms"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Mode {
    pub link: Link,
    /// Added to each direction; a round trip grows by twice this.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

/// Counters since start. Bytes count what was delivered, not what was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub accepted: u64,
    pub open: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
}

/// What connections watch. The counters let a connection notice a cut or blackhole even
/// if `heal` follows before its task runs.
#[derive(Clone, Copy, Debug)]
struct Control {
    mode: Mode,
    cuts: u64,
    blackholes: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
}

/// A running proxy. Clones share it; it stops on [`FaultProxy::stop`] or when the last
/// clone is dropped.
#[derive(Clone)]
pub struct FaultProxy {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    counters: Arc<Counters>,
    /// The accept loop, which owns every connection task: awaiting it after cancelling
    /// means all of them are gone.
    accept_loop: Mutex<Option<JoinHandle<()>>>,
    /// Cancels the accept loop when the last clone goes.
    _stop_on_drop: DropGuard,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one; see [`FaultProxy::addr`]) and forwards every
    /// accepted connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (control, _) = watch::channel(Control {
            mode: Mode {
                link: Link::Normal,
                delay: Duration::ZERO,
            },
            cuts: 0,
            blackholes: 0,
        });
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            upstream,
            control.subscribe(),
            counters.clone(),
            stop.clone(),
        ));
        tracing::debug!(proxy = %addr, %upstream, "fault proxy started");
        Ok(Self {
            inner: Arc::new(Inner {
                addr,
                control,
                counters,
                accept_loop: Mutex::new(Some(accept_loop)),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Sets the delay added to each direction, for every byte read from now on.
    pub fn set_delay(&self, one_way: Duration) {
        self.inner.control.send_modify(|c| c.mode.delay = one_way);
        tracing::info!(proxy = %self.inner.addr, delay = ?one_way, "fault proxy delay set");
    }

    /// Closes every open connection; until `heal`, closes new ones on accept.
    pub fn cut(&self) {
        self.inner.control.send_modify(|c| {
            c.mode.link = Link::Cut;
            c.cuts += 1;
        });
        tracing::info!(proxy = %self.inner.addr, "fault proxy cut");
    }

    /// Stops forwarding on every connection, without closing any, until `heal`.
    pub fn blackhole(&self) {
        self.inner.control.send_modify(|c| {
            c.mode.link = Link::Blackhole;
            c.blackholes += 1;
        });
        tracing::info!(proxy = %self.inner.addr, "fault proxy blackhole");
    }

    /// Back to forwarding; connections held by a blackhole are closed (see module docs).
    pub fn heal(&self) {
        self.inner
            .control
            .send_modify(|c| c.mode.link = Link::Normal);
        tracing::info!(proxy = %self.inner.addr, "fault proxy healed");
    }

    pub fn mode(&self) -> Mode {
        self.inner.control.borrow().mode
    }

    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            bytes_to_upstream: c.to_upstream.load(Ordering::Relaxed),
            bytes_to_client: c.to_client.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every connection; returns once all their tasks ended.
    /// Stops the proxy for every clone.
    pub async fn stop(self) {
        self.inner.stop.cancel();
        let handle = match self.inner.accept_loop.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    control: watch::Receiver<Control>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((client, peer)) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                if control.borrow().mode.link == Link::Cut {
                    tracing::debug!(%peer, "fault proxy refused connection: cut");
                    continue;
                }
                let control = control.clone();
                let open = OpenGuard::new(counters.clone());
                connections.spawn(async move {
                    connection(client, upstream, control, &open.0).await;
                    tracing::debug!(%peer, "fault proxy connection closed");
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: keep the connections we have.
                tracing::warn!(error = %err, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Aborting drops each task's sockets, which closes them.
    connections.shutdown().await;
}

/// Counts a connection as open for as long as its task (finished or aborted) lives.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One proxied connection, from accept to close. Returning closes both sockets.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    counters: &Counters,
) {
    let seen = *control.borrow_and_update();
    match seen.mode.link {
        Link::Cut => return,
        Link::Blackhole => {
            // Held without connecting upstream, then closed once the blackhole ends.
            let _ = control.wait_for(|c| c.mode.link != Link::Blackhole).await;
            return;
        }
        Link::Normal => {}
    }
    let delays = control.clone();
    let pump = pump(client, upstream, &delays, counters);
    tokio::pin!(pump);
    let fault = tokio::select! {
        result = &mut pump => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "fault proxy connection failed");
            }
            return;
        }
        fault = control.wait_for(|c| {
            c.mode.link != Link::Normal || c.cuts != seen.cuts || c.blackholes != seen.blackholes
        }) => match fault {
            Ok(fault) => *fault,
            Err(_) => return, // the proxy is gone
        },
    };
    if fault.mode.link == Link::Blackhole && fault.cuts == seen.cuts {
        // `pump` stays alive but unpolled: nothing is read or written, nothing closed.
        let _ = control.wait_for(|c| c.mode.link != Link::Blackhole).await;
    }
}

/// Connects upstream and forwards both ways until both directions reached EOF or either
/// failed.
async fn pump(
    client: TcpStream,
    upstream: SocketAddr,
    delays: &watch::Receiver<Control>,
    counters: &Counters,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    // Nagle on either leg would add its own delays to small requests.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::try_join!(
        forward(client_read, server_write, delays, &counters.to_upstream),
        forward(server_read, client_write, delays, &counters.to_client),
    )?;
    Ok(())
}

/// A chunk waiting to be written; empty means EOF.
struct Chunk {
    due: Instant,
    bytes: Bytes,
}

/// One direction: the reader stamps each chunk with its due time and queues it; the
/// writer waits until then and writes it, so reading never waits for the delay.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delays: &watch::Receiver<Control>,
    delivered: &AtomicU64,
) -> std::io::Result<()> {
    let (queue, mut due) = mpsc::channel::<Chunk>(IN_FLIGHT_CHUNKS);
    let read = async move {
        let mut buf = vec![0; CHUNK_BYTES];
        loop {
            let n = from.read(&mut buf).await?;
            let chunk = Chunk {
                due: Instant::now() + delays.borrow().mode.delay,
                bytes: Bytes::copy_from_slice(&buf[..n]),
            };
            // A closed queue means the writer failed; its error is the one to report.
            if queue.send(chunk).await.is_err() || n == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some(chunk) = due.recv().await {
            tokio::time::sleep_until(chunk.due).await;
            if chunk.bytes.is_empty() {
                to.shutdown().await?;
                break;
            }
            to.write_all(&chunk.bytes).await?;
            delivered.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    const LOOPBACK: &str = "127.0.0.1:0";

    /// Echoes every connection; on EOF from the client, shuts down its write half.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(LOOPBACK).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    stream.set_nodelay(true).unwrap();
                    let (mut r, mut w) = stream.split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    async fn proxy_to_echo() -> FaultProxy {
        let upstream = echo_server().await;
        FaultProxy::start(LOOPBACK.parse().unwrap(), upstream)
            .await
            .unwrap()
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Sends `msg`, reads the echo, returns the round-trip time.
    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
        let started = StdInstant::now();
        stream.write_all(msg).await.unwrap();
        let mut reply = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(reply, msg);
        started.elapsed()
    }

    /// True if the peer closed (EOF or error) within `limit`; false on data or silence.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0; 64];
        matches!(
            tokio::time::timeout(limit, stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Silent (no data, no EOF, no error) for all of `limit`.
    async fn silent_for(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0; 64];
        tokio::time::timeout(limit, stream.read(&mut buf))
            .await
            .is_err()
    }

    async fn assert_eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = StdInstant::now() + Duration::from_secs(5);
        while !check() {
            assert!(StdInstant::now() < deadline, "not within 5 s: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Writes all of `data`, half-closes, and reads until EOF; returns what came back.
    async fn send_and_read_to_eof(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = stream.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
            w // keep the half open until the reader is done
        });
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
            .await
            .expect("EOF within 30 s")
            .unwrap();
        drop(writer.await.unwrap());
        back
    }

    #[tokio::test]
    async fn forwards_a_large_payload_both_ways_byte_exact_and_propagates_eof() {
        let proxy = proxy_to_echo().await;
        let data = payload(4 << 20);
        for (delay, connections) in [(Duration::ZERO, 1), (Duration::from_millis(50), 2)] {
            proxy.set_delay(delay);
            let back = send_and_read_to_eof(connect(&proxy).await, data.clone()).await;
            assert!(back == data, "echo differs (delay {delay:?})");
            let stats = proxy.stats();
            assert_eq!(stats.accepted, connections);
            assert_eq!(stats.bytes_to_upstream, connections * data.len() as u64);
            assert_eq!(stats.bytes_to_client, connections * data.len() as u64);
        }
        assert_eventually("no connection open", || proxy.stats().open == 0).await;
    }

    #[tokio::test]
    async fn delay_is_added_each_way_without_limiting_throughput() {
        let proxy = proxy_to_echo().await;
        let mut stream = connect(&proxy).await;
        assert!(round_trip(&mut stream, b"warm").await < Duration::from_millis(100));

        // Set on an open connection: it applies there too.
        proxy.set_delay(Duration::from_millis(100));
        assert_eq!(proxy.mode().delay, Duration::from_millis(100));
        let rtt = round_trip(&mut stream, b"ping").await;
        assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
        assert!(rtt < Duration::from_millis(400), "round trip {rtt:?}");

        // 20 requests, each its own write (and read), pipelined: one delay, not twenty.
        let (mut r, mut w) = stream.into_split();
        let started = StdInstant::now();
        let writer = tokio::spawn(async move {
            for i in 0..20u8 {
                w.write_all(&[i; 100]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            w
        });
        let mut replies = vec![0; 20 * 100];
        r.read_exact(&mut replies).await.unwrap();
        let elapsed = started.elapsed();
        drop(writer.await.unwrap());
        for (i, reply) in replies.chunks(100).enumerate() {
            assert!(
                reply.iter().all(|&b| usize::from(b) == i),
                "reply {i} garbled"
            );
        }
        assert!(
            elapsed >= Duration::from_millis(200),
            "20 echoes in {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(1000),
            "20 echoes in {elapsed:?}"
        );
    }

    #[tokio::test]
    async fn cut_closes_open_and_new_connections_until_heal() {
        let proxy = proxy_to_echo().await;
        let mut open = connect(&proxy).await;
        round_trip(&mut open, b"before").await;

        proxy.cut();
        assert_eq!(proxy.mode().link, Link::Cut);
        assert!(closed_within(&mut open, Duration::from_secs(1)).await);
        let mut new = connect(&proxy).await;
        assert!(closed_within(&mut new, Duration::from_secs(1)).await);
        assert_eventually("no connection open", || proxy.stats().open == 0).await;

        proxy.heal();
        assert_eq!(proxy.mode().link, Link::Normal);
        let mut healed = connect(&proxy).await;
        round_trip(&mut healed, b"after").await;
        assert_eq!(proxy.stats().accepted, 3);
        assert_eq!(proxy.stats().open, 1);
    }

    #[tokio::test]
    async fn blackhole_stalls_without_error_and_heal_closes_the_held_connections() {
        let proxy = proxy_to_echo().await;
        proxy.set_delay(Duration::from_millis(20));
        let mut open = connect(&proxy).await;
        round_trip(&mut open, b"before").await;

        proxy.blackhole();
        open.write_all(b"held").await.unwrap();
        assert!(silent_for(&mut open, Duration::from_millis(300)).await);
        let mut new = connect(&proxy).await;
        new.write_all(b"held too").await.unwrap();
        assert!(silent_for(&mut new, Duration::from_millis(300)).await);
        assert_eq!(proxy.stats().open, 2);

        proxy.heal();
        assert_eq!(proxy.mode().delay, Duration::from_millis(20));
        assert!(closed_within(&mut open, Duration::from_secs(1)).await);
        assert!(closed_within(&mut new, Duration::from_secs(1)).await);
        let mut healed = connect(&proxy).await;
        round_trip(&mut healed, b"after").await;
    }

    #[tokio::test]
    async fn a_fault_healed_before_a_connection_notices_still_closes_it() {
        let proxy = proxy_to_echo().await;
        let mut a = connect(&proxy).await;
        let mut b = connect(&proxy).await;
        round_trip(&mut a, b"a").await;
        round_trip(&mut b, b"b").await;
        proxy.cut();
        proxy.heal();
        assert!(closed_within(&mut a, Duration::from_secs(1)).await);
        proxy.blackhole();
        proxy.heal();
        assert!(closed_within(&mut b, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn connections_progress_independently_under_delay() {
        let proxy = proxy_to_echo().await;
        proxy.set_delay(Duration::from_millis(50));
        let bulk = payload(16 << 20);

        // `busy` pushes 16 MiB and reads nothing back yet: its path backs up.
        let busy = connect(&proxy).await;
        let (mut busy_r, mut busy_w) = busy.into_split();
        let sent = bulk.clone();
        let writer = tokio::spawn(async move {
            busy_w.write_all(&sent).await.unwrap();
            busy_w.shutdown().await.unwrap();
            busy_w
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut quick = connect(&proxy).await;
        for _ in 0..5 {
            let rtt = round_trip(&mut quick, b"ping").await;
            assert!(rtt >= Duration::from_millis(100), "round trip {rtt:?}");
            assert!(rtt < Duration::from_millis(300), "round trip {rtt:?}");
        }

        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), busy_r.read_to_end(&mut back))
            .await
            .expect("bulk echo within 30 s")
            .unwrap();
        drop(writer.await.unwrap());
        assert!(back == bulk, "bulk echo differs");
    }

    #[tokio::test]
    async fn stop_and_drop_end_the_listener_and_every_connection() {
        let proxy = proxy_to_echo().await;
        let addr = proxy.addr();
        let mut open = connect(&proxy).await;
        round_trip(&mut open, b"x").await;
        proxy.clone().stop().await;
        assert!(closed_within(&mut open, Duration::from_millis(200)).await);
        assert!(TcpStream::connect(addr).await.is_err());

        let proxy = proxy_to_echo().await;
        let mut open = connect(&proxy).await;
        round_trip(&mut open, b"x").await;
        let clone = proxy.clone();
        drop(proxy);
        round_trip(&mut open, b"still there while a clone lives").await;
        drop(clone);
        assert!(closed_within(&mut open, Duration::from_secs(1)).await);
    }
}
