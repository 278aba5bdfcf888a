//! What both facades do when the service is told to stop (SIGTERM, Ctrl-C, or the actor
//! tree giving up), in this order:
//!
//! 1. stop accepting: the listener is closed at once, so a new connection is refused
//!    instead of waiting in the kernel's backlog for an accept that never comes (and then
//!    being reset with its request sent);
//! 2. answer what is in flight: each open connection finishes the request it is in and
//!    closes after that answer (HTTP: hyper's graceful shutdown, `Connection: close`; TCP:
//!    the line being handled is answered, lines already received behind it get a
//!    `503 shutting_down` each, which stores nothing, then the connection is closed with a
//!    FIN so that no reply is destroyed by a reset);
//! 3. wait, at most `shutdown.grace`, until every connection is gone ([`connections_closed`]).
//!
//! Only after both facades are done does `run_until_stopped` stop the actor tree, so the
//! ingest and buffer actors are alive for every request the facades answer: a write stored
//! in Redis is answered with its acknowledgement, never a 503 or a silence because an actor
//! stopped under it. What outlives the grace period (a body still trickling in, a
//! `?wait=replicated` still waiting) gets whatever the stopping tree answers, or nothing
//! once the process exits.

use std::time::Duration;

use tokio::sync::Semaphore;

/// Waits, at most `grace`, until every one of `max` connection slots is back (each
/// connection holds one for its life). `false`: some were still open when it ran out.
pub async fn connections_closed(slots: &Semaphore, max: usize, grace: Duration) -> bool {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_last_connection_within_the_grace_period() {
        let slots = Arc::new(Semaphore::new(3));
        let held = Arc::clone(&slots).try_acquire_owned().expect("a slot");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(held);
        });
        let started = tokio::time::Instant::now();
        assert!(connections_closed(&slots, 3, Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let slots = Arc::new(Semaphore::new(3));
        let _held = Arc::clone(&slots).try_acquire_owned().expect("a slot");
        let started = tokio::time::Instant::now();
        assert!(!connections_closed(&slots, 3, Duration::from_secs(10)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn no_connection_means_no_wait() {
        let slots = Semaphore::new(3);
        assert!(connections_closed(&slots, 3, Duration::ZERO).await);
    }
}
