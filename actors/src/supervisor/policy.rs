//! Restart decisions: backoff per attempt and a restart-intensity limit.
//!
//! Pure logic over `tokio::time::Instant`, so tests drive it with paused time.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::backoff::Backoff;

/// How many restarts a child may have within a window before the tree gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within: Duration,
}

/// A child's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub backoff: Backoff,
    /// `None`: restart forever and never escalate (the forwarder: a days-long WAN outage
    /// must not take the tree down).
    pub intensity: Option<Intensity>,
    /// A child that ran at least this long before failing starts its backoff over.
    pub reset_after: Duration,
}

/// What the supervisor does about a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    Restart(Duration),
    /// The intensity limit is exceeded: stop the tree, exit non-zero.
    Escalate,
}

/// Per-child restart bookkeeping.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// Consecutive quick failures: the backoff exponent.
    attempt: u32,
    /// When recent restarts happened, for the intensity window.
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            attempt: 0,
            recent: VecDeque::new(),
        }
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Decides about a failure at `now` of a child that had been running for `ran_for`.
    pub fn on_failure(&mut self, now: Instant, ran_for: Duration, rng: &mut impl Rng) -> Decision {
        if ran_for >= self.policy.reset_after {
            self.attempt = 0;
        }
        if let Some(limit) = self.policy.intensity {
            while self
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > limit.within)
            {
                self.recent.pop_front();
            }
            if self.recent.len() >= limit.max_restarts as usize {
                return Decision::Escalate;
            }
            self.recent.push_back(now);
        }
        let delay = self.policy.backoff.delay(self.attempt, rng);
        self.attempt = self.attempt.saturating_add(1);
        Decision::Restart(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy(intensity: Option<Intensity>) -> RestartPolicy {
        RestartPolicy {
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            intensity,
            reset_after: Duration::from_secs(60),
        }
    }

    fn delay(d: Decision) -> Duration {
        match d {
            Decision::Restart(d) => d,
            Decision::Escalate => panic!("unexpected escalation"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_intensity_it_restarts_forever_with_capped_delays() {
        let mut t = RestartTracker::new(policy(None));
        let mut rng = StdRng::seed_from_u64(1);
        let mut max_seen = Duration::ZERO;
        for _ in 0..10_000 {
            let d = delay(t.on_failure(Instant::now(), Duration::ZERO, &mut rng));
            assert!(d <= Duration::from_secs(30));
            max_seen = max_seen.max(d);
            tokio::time::advance(d).await;
        }
        assert!(
            max_seen > Duration::from_secs(20),
            "delays reach the cap region"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_then_resets_after_a_stable_run() {
        let mut t = RestartTracker::new(policy(None));
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..8 {
            t.on_failure(Instant::now(), Duration::from_millis(10), &mut rng);
        }
        assert_eq!(t.attempt, 8);
        // A child that then ran for longer than reset_after starts from the base again.
        let d = delay(t.on_failure(Instant::now(), Duration::from_secs(61), &mut rng));
        assert!(d <= Duration::from_millis(250));
        assert_eq!(t.attempt, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn exceeding_the_intensity_within_the_window_escalates() {
        let limit = Intensity {
            max_restarts: 3,
            within: Duration::from_secs(10),
        };
        let mut t = RestartTracker::new(policy(Some(limit)));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..3 {
            assert!(matches!(
                t.on_failure(Instant::now(), Duration::ZERO, &mut rng),
                Decision::Restart(_)
            ));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(
            t.on_failure(Instant::now(), Duration::ZERO, &mut rng),
            Decision::Escalate
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_spread_wider_than_the_window_never_escalate() {
        let limit = Intensity {
            max_restarts: 3,
            within: Duration::from_secs(10),
        };
        let mut t = RestartTracker::new(policy(Some(limit)));
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..100 {
            assert!(matches!(
                t.on_failure(Instant::now(), Duration::ZERO, &mut rng),
                Decision::Restart(_)
            ));
            tokio::time::advance(Duration::from_secs(4)).await;
        }
    }
}
