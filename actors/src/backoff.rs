//! Capped full-jitter exponential backoff.
//!
//! The delay before restart attempt `n` (0-based) is drawn uniformly from
//! `[0, min(cap, base * 2^n)]` ("full jitter"). Jitter spreads the restarts of many
//! processes that lost the same link at the same moment; the cap bounds how long a
//! healed link waits before it is used again.

use std::time::Duration;

use rand::Rng;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A capped exponential schedule. Pure: the random draw is passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// No delay is ever longer than this.
    pub cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
        }
    }

    /// The upper bound of the delay for `attempt` (0-based): `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // In 128-bit nanoseconds: a non-zero base times 2^127 is past `Duration::MAX`, so
        // clamping the attempt there changes nothing, and an overflow is past the cap.
        let grown = self.base.as_nanos().checked_mul(1u128 << attempt.min(127));
        match grown {
            Some(nanos) if nanos < self.cap.as_nanos() => {
                let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
                Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
            }
            _ => self.cap,
        }
    }

    /// A full-jitter delay for `attempt` drawn with `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_until_the_cap() {
        let b = Backoff::new(250 * MS, Duration::from_secs(30));
        let ceilings: Vec<_> = (0..10).map(|n| b.ceiling(n)).collect();
        assert_eq!(ceilings[0], 250 * MS);
        assert_eq!(ceilings[1], 500 * MS);
        assert_eq!(ceilings[6], 16_000 * MS);
        assert_eq!(ceilings[7], Duration::from_secs(30));
        assert_eq!(ceilings[9], Duration::from_secs(30));
        assert_eq!(
            b.ceiling(u32::MAX),
            Duration::from_secs(30),
            "huge attempts saturate"
        );
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let b = Backoff::new(250 * MS, Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let d = b.delay(attempt, &mut rng);
            assert!(d <= b.ceiling(attempt), "attempt {attempt}: {d:?}");
        }
        // Full jitter: at the cap, draws spread over the whole range, not just near the top.
        let draws: Vec<_> = (0..200).map(|_| b.delay(20, &mut rng)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(20)));
    }

    /// Not stuck at `base * 2^31` (24.8 days for 1 ms) when the cap is further still.
    #[test]
    fn ceiling_keeps_doubling_past_2_pow_31_up_to_a_far_cap() {
        let b = Backoff::new(MS, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(b.ceiling(32), MS * 2 * (1 << 31));
        assert_eq!(b.ceiling(33), b.cap);
        let tiny = Backoff::new(Duration::from_nanos(1), Duration::MAX);
        assert_eq!(tiny.ceiling(40), Duration::from_nanos(1 << 40));
        assert_eq!(tiny.ceiling(u32::MAX), Duration::MAX);
        let zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.ceiling(u32::MAX), Duration::ZERO, "0 * 2^n is 0");
    }

    #[test]
    fn cap_below_base_is_raised_to_base() {
        let b = Backoff::new(MS * 100, MS * 10);
        assert_eq!(b.ceiling(5), MS * 100);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Any duration, from nothing to `Duration::MAX`, weighted towards realistic ones.
        fn duration() -> impl Strategy<Value = Duration> {
            prop_oneof![
                (0u64..=120_000).prop_map(Duration::from_millis),
                any::<u64>().prop_map(Duration::from_nanos),
                (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
                Just(Duration::MAX),
            ]
        }

        fn attempt() -> impl Strategy<Value = u32> {
            prop_oneof![0u32..64, any::<u32>(), Just(u32::MAX)]
        }

        proptest! {
            #![proptest_config(crate::proptest_config())]

            #[test]
            fn delays_stay_under_the_ceiling_and_the_cap(
                base in duration(),
                cap in duration(),
                attempt in attempt(),
                seed in any::<u64>(),
            ) {
                let b = Backoff::new(base, cap);
                let ceiling = b.ceiling(attempt);
                prop_assert!(ceiling <= b.cap);
                prop_assert!(b.cap >= b.base && b.cap >= cap);
                let mut rng = StdRng::seed_from_u64(seed);
                prop_assert!(b.delay(attempt, &mut rng) <= ceiling);
            }

            /// `min(cap, base * 2^attempt)`, as documented, for every attempt: checked in
            /// 128-bit nanoseconds, where nothing overflows before the cap.
            #[test]
            fn the_ceiling_is_the_documented_formula(
                base in duration(),
                cap in duration(),
                attempt in attempt(),
            ) {
                let b = Backoff::new(base, cap);
                let grown = if b.base.is_zero() {
                    Some(0)
                } else if attempt >= 128 {
                    None
                } else {
                    b.base.as_nanos().checked_mul(1u128 << attempt)
                };
                let expected = grown.map_or(b.cap.as_nanos(), |g| g.min(b.cap.as_nanos()));
                prop_assert_eq!(b.ceiling(attempt).as_nanos(), expected);
            }

            #[test]
            fn ceilings_never_shrink_and_start_at_the_base(
                base in duration(),
                cap in duration(),
                attempt in 0u32..u32::MAX,
            ) {
                let b = Backoff::new(base, cap);
                prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
                prop_assert_eq!(b.ceiling(0), base, "the first delay is at most the base");
            }
        }
    }
}
