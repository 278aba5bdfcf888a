//! Connections counted per peer: both facades take a [`PeerSlot`] for each connection they
//! serve, so that one client (a runaway script, a flood) cannot take every slot of a
//! facade's cap.
//!
//! Guarantees:
//! - at most `max` slots are held at once per IP address (the port does not count: a
//!   peer is a host; an IPv4 address mapped into IPv6 is the IPv4 address). Loopback is
//!   one address like any other: local clients share `127.0.0.1`'s slots unless they
//!   connect from distinct addresses of `127.0.0.0/8`;
//! - a slot is given back when its [`PeerSlot`] is dropped, however the connection ends;
//! - the map holds an entry only while a slot of its address is held, so it is bounded by
//!   the facade's own connection cap;
//! - at most [`MAX_REFUSING`] refused connections are being answered at once ([`Refusals`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refused connections being answered at once, per facade: each holds its descriptor while
/// its answer is written and read (up to a few seconds). Beyond, a refused connection is
/// closed at once without an answer, so a flood over the caps cannot spend the descriptors.
pub const MAX_REFUSING: usize = 64;

/// The refusals being answered (at most [`MAX_REFUSING`]).
#[derive(Debug, Clone)]
pub struct Refusals(Arc<Semaphore>);

impl Default for Refusals {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_REFUSING)))
    }
}

impl Refusals {
    /// A turn to answer one refused connection, held while it is answered; `None`: close
    /// it at once.
    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }
}

/// The slots held, per address, against one cap.
#[derive(Debug)]
pub struct Peers {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One slot of one address, held for a connection's life.
#[derive(Debug)]
pub struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    /// At most `max` slots per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The cap per address.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `ip`, unless it holds `max` already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let ip = ip.to_canonical();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }

    /// Slots held by `ip` now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self
            .peers
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_address_holds_at_most_max_slots_and_others_are_not_affected() {
        let peers = Peers::new(2);
        let a = [
            peers.try_acquire(ip("10.0.0.1")),
            peers.try_acquire(ip("10.0.0.1")),
        ];
        assert!(a.iter().all(Option::is_some));
        assert!(peers.try_acquire(ip("10.0.0.1")).is_none());
        assert!(peers.try_acquire(ip("10.0.0.2")).is_some());
        assert!(peers.try_acquire(ip("127.0.0.2")).is_some());
    }

    #[test]
    fn a_dropped_slot_is_given_back_and_an_empty_address_leaves_the_map() {
        let peers = Peers::new(1);
        let slot = peers.try_acquire(ip("10.0.0.1"));
        assert!(peers.try_acquire(ip("10.0.0.1")).is_none());
        drop(slot);
        assert_eq!(peers.held(ip("10.0.0.1")), 0);
        assert!(peers.held.lock().expect("lock").is_empty());
        assert!(peers.try_acquire(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn at_most_max_refusing_refusals_are_answered_at_once() {
        let refusals = Refusals::default();
        let turns: Vec<_> = (0..MAX_REFUSING).map(|_| refusals.try_start()).collect();
        assert!(turns.iter().all(Option::is_some));
        assert!(refusals.try_start().is_none(), "the next is closed at once");
        drop(turns);
        assert!(refusals.try_start().is_some());
    }

    #[test]
    fn an_ipv4_address_mapped_into_ipv6_is_the_same_peer() {
        let peers = Peers::new(1);
        let _slot = peers.try_acquire(ip("192.0.2.7"));
        assert!(peers.try_acquire(ip("::ffff:192.0.2.7")).is_none());
    }
}
