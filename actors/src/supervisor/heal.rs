//! Heal detection: restart a backing-off child as soon as what it failed to reach is back.
//!
//! A child may come with a [`Probe`]: a cheap reachability check of its remote dependency
//! (the forwarder's: a TCP connect and one protocol byte from the primary; the replica
//! tracker's: a session and the replica's replay position). While the child
//! waits out its backoff, the supervisor runs the probe every [`Probe::every`]; the child
//! restarts at the earlier of its backoff delay and the first probe success that follows a
//! probe failure. So:
//! - a days-long outage ends within one probe interval (plus the probe's round trip) of the
//!   link coming back, whatever the backoff has grown to;
//! - a real crash with the dependency reachable (the first probe succeeds) keeps its full
//!   capped, jittered backoff: the probe stops after that success and cannot turn a crash
//!   loop into a tight loop;
//! - "seen down" outlives the incarnation that saw it: a restart whose connect was still
//!   hanging when the link healed fails, and the next wait's first probe success wakes it.
//!
//! Pure logic; the supervisor only carries the decisions out.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

/// A reachability check: `true` when the dependency answered.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// How a child's dependency is probed while the child backs off.
#[derive(Clone)]
pub struct Probe {
    pub check: Check,
    /// Interval between probe starts. Probes overlap when one takes longer (a dead WAN
    /// link times out rather than refuses), so a heal is seen within about one interval.
    pub every: Duration,
}

/// What to do after one probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The dependency came back after being seen down: restart the child now.
    RestartNow,
    /// Still down: keep probing until the backoff delay elapses.
    ProbeAgain,
    /// Reachable, and never seen down: the failure was not about reachability; sit out
    /// the backoff without probing further.
    Stop,
}

/// Per-child probe bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct HealWatch {
    /// A probe failed since the last early restart (or the last stable run).
    seen_down: bool,
}

impl HealWatch {
    /// The child failed after running `ran_for`; `stable` as the restart policy defines it.
    /// A child that ran stably has reached its dependency since any earlier outage.
    pub fn on_failure(&mut self, stable: bool) {
        if stable {
            self.seen_down = false;
        }
    }

    /// One probe result, while the child waits for its restart.
    pub fn on_probe(&mut self, reachable: bool) -> Step {
        match (reachable, self.seen_down) {
            (false, _) => {
                self.seen_down = true;
                Step::ProbeAgain
            }
            (true, true) => {
                self.seen_down = false;
                Step::RestartNow
            }
            (true, false) => Step::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;
    use crate::supervisor::policy::{Decision, RestartPolicy, RestartTracker};
    use rand::{rngs::StdRng, SeedableRng};
    use tokio::time::Instant;

    const EVERY: Duration = Duration::from_millis(250);

    fn tracker(cap: Duration) -> RestartTracker {
        RestartTracker::new(RestartPolicy {
            backoff: Backoff::new(Duration::from_millis(250), cap),
            intensity: None,
            reset_after: Duration::from_secs(60),
        })
    }

    /// Waits out one backoff `delay` the way the supervisor does, probing `up(now)` every
    /// [`EVERY`]; returns how long the wait lasted.
    async fn wait(
        watch: &mut HealWatch,
        delay: Duration,
        up: impl Fn(Instant) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let due = start + delay;
        let mut next_probe = start;
        while next_probe < due {
            tokio::time::advance(next_probe - Instant::now()).await;
            match watch.on_probe(up(Instant::now())) {
                Step::RestartNow => return start.elapsed(),
                Step::ProbeAgain => next_probe += EVERY,
                Step::Stop => break,
            }
        }
        tokio::time::advance(due - Instant::now()).await;
        start.elapsed()
    }

    fn restart_delay(tracker: &mut RestartTracker, rng: &mut StdRng) -> Duration {
        match tracker.on_failure(Instant::now(), Duration::ZERO, rng) {
            Decision::Restart(d) => d,
            Decision::Escalate => panic!("the forwarder never escalates"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_long_outage_the_child_restarts_within_one_probe_interval_of_the_heal() {
        let heal = Instant::now() + Duration::from_secs(3600);
        let up = move |now: Instant| now >= heal;
        let mut t = tracker(Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(7);
        let mut watch = HealWatch::default();
        // The child crashes at every start while the link is down.
        while Instant::now() < heal {
            let delay = restart_delay(&mut t, &mut rng);
            wait(&mut watch, delay, up).await;
        }
        let late = Instant::now() - heal;
        assert!(late <= EVERY, "restarted {late:?} after the heal");
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_with_the_dependency_reachable_keeps_its_full_backoff() {
        let mut watch = HealWatch::default();
        let waited = wait(&mut watch, Duration::from_secs(20), |_| true).await;
        assert_eq!(waited, Duration::from_secs(20));
        // And the next crash too: a reachable dependency never shortens a backoff.
        let waited = wait(&mut watch, Duration::from_secs(20), |_| true).await;
        assert_eq!(waited, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heal_during_a_hanging_restart_wakes_the_next_wait_at_once() {
        let mut watch = HealWatch::default();
        // Down during the whole first wait: the backoff elapses, the child starts and
        // its connect hangs; the link heals meanwhile; the connect fails.
        wait(&mut watch, Duration::from_secs(5), |_| false).await;
        watch.on_failure(false);
        let waited = wait(&mut watch, Duration::from_secs(30), |_| true).await;
        assert_eq!(waited, Duration::ZERO);
        // The early restart was spent: a further crash with the link up backs off fully.
        watch.on_failure(false);
        let waited = wait(&mut watch, Duration::from_secs(30), |_| true).await;
        assert_eq!(waited, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_run_forgets_an_old_outage() {
        let mut watch = HealWatch::default();
        wait(&mut watch, Duration::from_secs(1), |_| false).await;
        watch.on_failure(true);
        let waited = wait(&mut watch, Duration::from_secs(10), |_| true).await;
        assert_eq!(waited, Duration::from_secs(10));
    }
}
