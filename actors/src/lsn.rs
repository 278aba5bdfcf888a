//! PostgreSQL log sequence numbers: `X/Y` text, a 64-bit position in the WAL.
//!
//! Redis sorted-set scores are doubles, exact for integers only up to 2^53. Scores are
//! therefore rounded so that a range query can never mark a transaction replicated too
//! early: a commit LSN is rounded up ([`Lsn::score_ceil`]), a replay LSN down
//! ([`Lsn::score_floor`]). Below 2^53 (8 PiB of WAL) both are exact.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an LSN: {0:?}")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        // PostgreSQL's grammar: 1 to 8 hex digits on each side. Checked here rather than
        // left to `from_str_radix`, which would also take a sign ("+0/A").
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        Ok(Self((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Lsn {
    /// The smallest double not below this LSN.
    pub fn score_ceil(self) -> f64 {
        let d = self.0 as f64;
        if (d as u64) < self.0 {
            next_up(d)
        } else {
            d
        }
    }

    /// The largest double not above this LSN.
    pub fn score_floor(self) -> f64 {
        let d = self.0 as f64;
        // `as u64` saturates at u64::MAX, which is only reached when d rounded up past it.
        if d >= 18_446_744_073_709_551_615.0 || (d as u64) > self.0 {
            next_down(d)
        } else {
            d
        }
    }

    /// Bytes between two positions (0 when `other` is ahead).
    pub fn bytes_since(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

fn next_up(d: f64) -> f64 {
    f64::from_bits(d.to_bits() + 1)
}

fn next_down(d: f64) -> f64 {
    f64::from_bits(d.to_bits() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_postgres_text() {
        for (text, value) in [
            ("0/0", 0),
            ("0/16B3748", 0x16B_3748),
            ("1/0", 1 << 32),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().expect(text);
            assert_eq!(lsn.0, value);
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!(
            "16/B374D848".parse::<Lsn>().expect("lsn").0,
            0x16_B374_D848,
            "above 2^32"
        );
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "G/0",
            "1/2/3",
            "123456789/0",
            "-1/0",
            "+0/A",
            "0/+A",
            " 0/1",
            "0/1 ",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ordering_is_numeric_not_textual() {
        let a: Lsn = "0/FFFFFFFF".parse().expect("a");
        let b: Lsn = "1/0".parse().expect("b");
        assert!(a < b);
        assert_eq!(b.bytes_since(a), 1);
        assert_eq!(a.bytes_since(b), 0);
    }

    #[test]
    fn scores_are_exact_below_2_pow_53() {
        let lsn = Lsn((1 << 53) - 1);
        assert_eq!(lsn.score_ceil(), lsn.0 as f64);
        assert_eq!(lsn.score_floor(), lsn.0 as f64);
    }

    #[test]
    fn above_2_pow_53_rounding_never_marks_replicated_early() {
        // Two LSNs that share one double: a commit just above a replay position must not
        // look replayed.
        let replay = Lsn((1 << 60) + 1);
        let commit = Lsn((1 << 60) + 2);
        assert!(commit.score_ceil() > replay.score_floor());
        for v in [(1u64 << 60) + 3, u64::MAX, u64::MAX - 1, (1 << 53) + 1] {
            let lsn = Lsn(v);
            assert!(
                lsn.score_ceil() as u128 >= u128::from(v)
                    || lsn.score_ceil() >= 1.8446744073709552e19
            );
            assert!((lsn.score_floor() as u128) <= u128::from(v));
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Every position, weighted towards the interesting ones: small (exact scores),
        /// around 2^53 (where doubles stop being exact) and near the top (where a double
        /// rounds to 2^64, past every u64).
        fn position() -> impl Strategy<Value = u64> {
            prop_oneof![
                any::<u64>(),
                0..(1u64 << 20),
                ((1u64 << 53) - 4096)..((1u64 << 53) + 4096),
                (u64::MAX - 4096)..=u64::MAX,
            ]
        }

        /// PostgreSQL's own grammar (`pg_lsn_in`): 1 to 8 hex digits, `/`, 1 to 8 hex
        /// digits; nothing else.
        fn reference_parse(s: &str) -> Option<u64> {
            let part = |p: &str| {
                (!p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| u64::from_str_radix(p, 16).ok())
                    .flatten()
            };
            let (hi, lo) = s.split_once('/')?;
            Some((part(hi)? << 32) | part(lo)?)
        }

        /// `x` exactly, as an integer: every double that is a score is one.
        fn exact(score: f64) -> u128 {
            assert!(score >= 0.0 && score.fract() == 0.0, "{score}");
            score as u128
        }

        proptest! {
            #![proptest_config(crate::proptest_config())]

            #[test]
            fn text_round_trips_for_every_position(v in position()) {
                prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
                prop_assert_eq!(Lsn(v).to_string().to_lowercase().parse::<Lsn>(), Ok(Lsn(v)));
            }

            #[test]
            fn parsing_accepts_exactly_postgres_text(
                s in prop_oneof![
                    any::<String>(),
                    "[0-9a-fA-FgG+ /-]{0,20}",
                    "[+-]?[0-9A-F]{0,9}/[+-]?[0-9A-F]{0,9}",
                ]
            ) {
                prop_assert_eq!(s.parse::<Lsn>().ok().map(|l| l.0), reference_parse(&s), "{:?}", s);
            }

            #[test]
            fn ordering_is_the_positions_ordering(a in position(), b in position()) {
                prop_assert_eq!(Lsn(a).cmp(&Lsn(b)), a.cmp(&b));
                let (ta, tb) = (Lsn(a).to_string(), Lsn(b).to_string());
                prop_assert_eq!(ta.parse::<Lsn>().ok().cmp(&tb.parse::<Lsn>().ok()), a.cmp(&b));
            }

            /// `score_floor(x) <= x <= score_ceil(x)`, each the nearest double on its side.
            #[test]
            fn scores_bracket_the_position_tightly(v in position()) {
                let (floor, ceil) = (Lsn(v).score_floor(), Lsn(v).score_ceil());
                prop_assert!(exact(floor) <= u128::from(v), "floor {floor} of {v}");
                prop_assert!(exact(ceil) >= u128::from(v), "ceil {ceil} of {v}");
                if v < 1 << 53 {
                    prop_assert!(exact(floor) == u128::from(v) && exact(ceil) == u128::from(v));
                } else {
                    // Every double from 2^53 on is an integer: the neighbours are too.
                    prop_assert!(exact(f64::from_bits(floor.to_bits() + 1)) > u128::from(v));
                    prop_assert!(exact(f64::from_bits(ceil.to_bits() - 1)) < u128::from(v));
                }
            }

            #[test]
            fn scores_are_monotonic(a in position(), b in position()) {
                let (lo, hi) = (Lsn(a.min(b)), Lsn(a.max(b)));
                prop_assert!(lo.score_floor() <= hi.score_floor());
                prop_assert!(lo.score_ceil() <= hi.score_ceil());
            }

            /// The tracker marks a commit replicated when the replay position's floor has
            /// reached the commit's ceiling: that must never happen before the replay
            /// position has reached the commit. Neighbours share a double above 2^53.
            #[test]
            fn a_commit_is_never_rounded_below_a_replay_position(
                replay in position(),
                delta in -4096i64..=4096,
            ) {
                let commit = replay.saturating_add_signed(delta);
                if Lsn(replay).score_floor() >= Lsn(commit).score_ceil() {
                    prop_assert!(replay >= commit, "replay {replay} commit {commit}");
                }
            }

            #[test]
            fn bytes_since_is_the_distance_or_zero(a in position(), b in position()) {
                let d = Lsn(a).bytes_since(Lsn(b));
                // In i128, where the difference always exists; negative means `b` is ahead.
                let distance = i128::from(a) - i128::from(b);
                prop_assert_eq!(d, u64::try_from(distance).unwrap_or(0));
            }
        }
    }
}
