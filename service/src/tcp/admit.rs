//! Which TCP connections are served: the slots a connection must hold from its accept.
//!
//! Guarantees:
//! - at most `tcp.max_connections` connections, and at most `tcp.max_connections_per_peer`
//!   from one IP address (`crate::peers`);
//! - at most `tcp.max_unauthenticated` (never more than `max_connections`) of them without a
//!   valid token yet, and at most half of those from one address: a flood of idle strangers
//!   holds at most that many slots, the rest stay for authenticated clients, and another
//!   address can still connect and authenticate;
//! - a connection gives its unauthenticated slots back the moment it presents a valid token
//!   ([`Held::authenticated`]), and every slot when it ends.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Tcp;
use crate::peers::{PeerSlot, Peers};

/// The facade's caps.
pub(super) struct Admission {
    /// `max_connections`: the shutdown waits for all of it to come back.
    pub(super) total: Arc<Semaphore>,
    pub(super) max_total: usize,
    peers: Arc<Peers>,
    unauthenticated: Arc<Semaphore>,
    max_unauthenticated: usize,
    unauthenticated_peers: Arc<Peers>,
}

/// What a served connection holds.
pub(super) struct Held {
    _total: OwnedSemaphorePermit,
    _peer: PeerSlot,
    /// Until the connection presents a valid token.
    unauthenticated: Option<(OwnedSemaphorePermit, PeerSlot)>,
}

impl Held {
    /// The connection presented a valid token: it no longer counts as a stranger.
    pub(super) fn authenticated(&mut self) {
        self.unauthenticated = None;
    }
}

impl Admission {
    pub(super) fn new(tcp: &Tcp) -> Self {
        let max_unauthenticated = tcp.max_unauthenticated.min(tcp.max_connections);
        Self {
            total: Arc::new(Semaphore::new(tcp.max_connections)),
            max_total: tcp.max_connections,
            peers: Peers::new(tcp.max_connections_per_peer),
            unauthenticated: Arc::new(Semaphore::new(max_unauthenticated)),
            max_unauthenticated,
            unauthenticated_peers: Peers::new((max_unauthenticated / 2).max(1)),
        }
    }

    /// The slots for a new connection from `ip`, or why it is refused (the error line's
    /// message).
    pub(super) fn admit(&self, ip: IpAddr) -> Result<Held, String> {
        let Ok(total) = Arc::clone(&self.total).try_acquire_owned() else {
            return Err(format!(
                "at most {} connections are served at once; retry later",
                self.max_total
            ));
        };
        let Some(peer) = self.peers.try_acquire(ip) else {
            return Err(format!(
                "at most {} connections are served at once from one address ({ip}); retry later",
                self.peers.max()
            ));
        };
        let stranger = Arc::clone(&self.unauthenticated).try_acquire_owned().ok();
        let stranger_peer = self.unauthenticated_peers.try_acquire(ip);
        let (Some(stranger), Some(stranger_peer)) = (stranger, stranger_peer) else {
            return Err(format!(
                "at most {} connections without a valid token yet are served at once, {} of \
                 them from one address; authenticate first thing, retry later",
                self.max_unauthenticated,
                self.unauthenticated_peers.max()
            ));
        };
        Ok(Held {
            _total: total,
            _peer: peer,
            unauthenticated: Some((stranger, stranger_peer)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tcp(max: usize, per_peer: usize, unauthenticated: usize) -> Tcp {
        Tcp {
            listen: "127.0.0.1:0".parse().expect("address"),
            max_line_bytes: 1 << 20,
            unauthenticated_line_bytes: 4096,
            max_connections: max,
            idle_timeout: Duration::from_secs(60),
            max_connections_per_peer: per_peer,
            auth_timeout: Duration::from_secs(10),
            max_unauthenticated: unauthenticated,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn strangers_from_one_address_take_half_the_unauthenticated_slots_at_most() {
        let admission = Admission::new(&tcp(100, 100, 8));
        let flood: Vec<_> = (0..4).map(|_| admission.admit(ip(1))).collect();
        assert!(flood.iter().all(Result::is_ok));
        assert!(
            admission.admit(ip(1)).is_err(),
            "half of 8 from one address"
        );
        let others: Vec<_> = (0..4).map(|_| admission.admit(ip(2))).collect();
        assert!(others.iter().all(Result::is_ok));
        assert!(admission.admit(ip(3)).is_err(), "8 strangers at most");
    }

    #[test]
    fn an_authenticated_connection_frees_its_stranger_slots_but_not_its_address_slot() {
        let admission = Admission::new(&tcp(100, 3, 2));
        let mut first = admission.admit(ip(1)).expect("served");
        assert!(admission.admit(ip(1)).is_err(), "one stranger per address");
        first.authenticated();
        let mut second = admission
            .admit(ip(1))
            .expect("served once the first authenticated");
        second.authenticated();
        let _third = admission.admit(ip(1)).expect("served");
        assert!(
            admission.admit(ip(1)).is_err(),
            "3 per address, authenticated or not"
        );
        drop(first);
        assert!(admission.admit(ip(2)).is_ok(), "another address");
    }

    #[test]
    fn the_total_cap_bounds_everything() {
        let admission = Admission::new(&tcp(2, 10, 64));
        let mut held: Vec<_> = (1..=2)
            .map(|n| admission.admit(ip(n)).expect("served"))
            .collect();
        held.iter_mut().for_each(Held::authenticated);
        assert!(admission.admit(ip(3)).is_err());
    }
}
