//! Batches that fail without a culprit are split until the culprit is alone.
//!
//! A batch the primary did not finish (a statement timeout on either side, a connection
//! dropped after the batch was sent) names no transaction: any of them, or only their
//! number, may be the cause. The next batches are smaller: each such failure halves the
//! limit (down to one transaction), and the limit holds until a batch that reaches past
//! the last entry of every batch that failed this way commits; then batches are whole
//! again. So a batch that was merely too large goes through as halves, and a transaction
//! that cannot finish in time ends up alone, where its timeouts are counted against it
//! (see `isolate`).
//!
//! Kept across the forwarder's restarts (in [`super::Isolation`]); a service restart
//! forgets it, and at most `log2(batch_size)` more failures find the culprit again.

/// A stream entry id (`<ms>-<seq>`) as a pair of numbers, which orders like the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPos(u64, u64);

impl StreamPos {
    /// `None` for text that is not a stream id (then nothing is split by it).
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

/// The limit in force after failures without a culprit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Most transactions in the next batch.
    pub limit: usize,
    /// The last entry of the batches that failed: the limit holds until a batch that
    /// reaches it commits.
    until: StreamPos,
}

impl Split {
    /// After a batch of `len` transactions whose last entry is `last` failed without a
    /// culprit, with `current` in force before it.
    pub fn after_stall(current: Option<Split>, len: usize, last: StreamPos) -> Split {
        let until = current.map_or(last, |s| s.until.max(last));
        Split {
            limit: (len / 2).max(1),
            until,
        }
    }

    /// After a batch whose last entry is `last` committed: twice the limit, or `None` once
    /// it reached the end of what failed.
    pub fn after_commit(current: Option<Split>, last: StreamPos) -> Option<Split> {
        current.filter(|s| last < s.until).map(|s| Split {
            limit: s.limit.saturating_mul(2),
            ..s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(id: &str) -> StreamPos {
        StreamPos::parse(id).expect("stream id")
    }

    #[test]
    fn stream_ids_order_by_number_not_text() {
        assert!(pos("9-0") < pos("10-0"));
        assert!(pos("10-2") < pos("10-10"));
        assert_eq!(StreamPos::parse("10"), None);
        assert_eq!(StreamPos::parse("a-1"), None);
    }

    #[test]
    fn stalls_halve_the_batch_down_to_one_transaction() {
        let mut split = None;
        let mut limits = Vec::new();
        let mut len = 2000;
        while limits.last() != Some(&1) {
            let s = Split::after_stall(split, len, pos("100-0"));
            limits.push(s.limit);
            len = s.limit;
            split = Some(s);
        }
        assert_eq!(
            limits,
            [1000, 500, 250, 125, 62, 31, 15, 7, 3, 1],
            "log2 steps to one transaction"
        );
        // A single transaction that stalls again stays alone.
        assert_eq!(Split::after_stall(split, 1, pos("100-0")).limit, 1);
    }

    #[test]
    fn the_limit_holds_until_a_batch_past_the_failed_range_commits() {
        let split = Some(Split::after_stall(None, 100, pos("50-0")));
        assert_eq!(split.map(|s| s.limit), Some(50));
        let split = Split::after_commit(split, pos("20-0"));
        assert_eq!(
            split.map(|s| s.limit),
            Some(100),
            "inside the range: doubled"
        );
        // A later stall inside the range keeps the range's end.
        let split = Some(Split::after_stall(split, 100, pos("30-0")));
        assert_eq!(split.map(|s| s.limit), Some(50));
        assert!(Split::after_commit(split, pos("49-9")).is_some());
        assert_eq!(
            Split::after_commit(split, pos("50-0")),
            None,
            "past it: whole"
        );
        assert_eq!(Split::after_commit(None, pos("1-0")), None);
    }
}
