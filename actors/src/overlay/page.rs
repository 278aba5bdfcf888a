//! Keyset pages of list reads: every list answer is bounded by its limit (at most
//! [`MAX_LIMIT`]), and a cursor continues it.
//!
//! Ids are UUIDv7 (time-ordered) and are written once, so "id > cursor ORDER BY id" is a
//! stable cursor across both sources of a read: the replica's rows and the overlay's
//! index sets are each cut at `limit + 1` after the cursor, merged in id order and cut
//! again at `limit`. Any id among the first `limit` of the union is among the first
//! `limit` of its own side, so a page neither skips nor repeats a record, and a record
//! moving from the overlay to the replica between two pages keeps its place.

use std::collections::BTreeMap;

use uuid::Uuid;

/// The page size when the caller names none: the common case stays one answer.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page: bounds the rows read, the Redis pipeline and the answer's size.
pub const MAX_LIMIT: usize = 1000;

/// The page of each nested list in a list answer (a unit's packages and files in
/// `GET /executed_obs_units`): a list answer holds at most `limit × (1 + 2 × NESTED_LIMIT)`
/// records, whatever `limit`. A detail read's nested lists take the caller's `limit`; the
/// `_next_cursor` of a nested list continues it there.
pub const NESTED_LIMIT: usize = 10;

/// A limit outside `1..=MAX_LIMIT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit must be an integer from 1 to {MAX_LIMIT}")]
pub struct BadLimit;

/// Which page of a list to read: at most `limit` records with ids after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    limit: usize,
    after: Option<Uuid>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl PageRequest {
    pub fn new(limit: usize, after: Option<Uuid>) -> Result<Self, BadLimit> {
        if (1..=MAX_LIMIT).contains(&limit) {
            Ok(Self { limit, after })
        } else {
            Err(BadLimit)
        }
    }

    /// The first page of a nested list in a list answer: [`NESTED_LIMIT`] records.
    pub fn nested() -> Self {
        Self {
            limit: NESTED_LIMIT,
            after: None,
        }
    }

    pub fn limit(self) -> usize {
        self.limit
    }

    pub fn after(self) -> Option<Uuid> {
        self.after
    }

    /// The same size, after another cursor.
    pub fn after_id(self, after: Option<Uuid>) -> Self {
        Self { after, ..self }
    }

    /// How many ids each source is asked for: one more than the page, to know whether
    /// there is more.
    pub(super) fn fetch(self) -> usize {
        self.limit + 1
    }

    /// Whether `id` belongs after the cursor: what the replica's `id > $cursor` and the
    /// index's `ZRANGEBYLEX (cursor` select; the model of the tests below.
    #[cfg(test)]
    fn admits(self, id: Uuid) -> bool {
        self.after.is_none_or(|after| id > after)
    }
}

/// The first `limit` entries in id order, and the cursor of the next page if any entry
/// was left out (the last id kept).
pub(super) fn cut<V>(
    mut by_id: BTreeMap<Uuid, V>,
    limit: usize,
) -> (BTreeMap<Uuid, V>, Option<Uuid>) {
    let Some(first_left_out) = by_id.keys().nth(limit).copied() else {
        return (by_id, None);
    };
    by_id.split_off(&first_left_out);
    let next = by_id.keys().next_back().copied();
    (by_id, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u128) -> BTreeMap<Uuid, ()> {
        (1..=n).map(|i| (Uuid::from_u128(i), ())).collect()
    }

    #[test]
    fn a_limit_outside_one_to_max_is_refused() {
        assert_eq!(PageRequest::new(0, None), Err(BadLimit));
        assert_eq!(PageRequest::new(MAX_LIMIT + 1, None), Err(BadLimit));
        assert!(PageRequest::new(MAX_LIMIT, None).is_ok());
        assert_eq!(PageRequest::default().limit(), DEFAULT_LIMIT);
    }

    #[test]
    fn a_cut_keeps_the_first_limit_and_names_the_last_kept_as_cursor() {
        let (kept, next) = cut(ids(5), 3);
        assert_eq!(kept.len(), 3);
        assert_eq!(next, Some(Uuid::from_u128(3)));
        let (kept, next) = cut(ids(3), 3);
        assert_eq!((kept.len(), next), (3, None), "exactly full: no next page");
    }

    #[test]
    fn walking_the_union_of_two_sides_by_cursor_sees_each_id_once() {
        // Replica holds the odd ids, the overlay the multiples of three: they overlap.
        let replica: Vec<Uuid> = (1..=50u128)
            .filter(|i| i % 2 == 1)
            .map(Uuid::from_u128)
            .collect();
        let overlay: Vec<Uuid> = (1..=50u128)
            .filter(|i| i % 3 == 0)
            .map(Uuid::from_u128)
            .collect();
        let mut page = PageRequest::new(7, None).expect("limit");
        let mut seen = Vec::new();
        loop {
            let side = |ids: &[Uuid]| -> Vec<Uuid> {
                ids.iter()
                    .copied()
                    .filter(|id| page.admits(*id))
                    .take(page.fetch())
                    .collect()
            };
            let union: BTreeMap<Uuid, ()> = side(&replica)
                .into_iter()
                .chain(side(&overlay))
                .map(|id| (id, ()))
                .collect();
            let (kept, next) = cut(union, page.limit());
            seen.extend(kept.into_keys());
            match next {
                Some(next) => page = page.after_id(Some(next)),
                None => break,
            }
        }
        let mut want: Vec<Uuid> = replica.into_iter().chain(overlay).collect();
        want.sort();
        want.dedup();
        assert_eq!(seen, want);
    }
}
