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
mod tests;
