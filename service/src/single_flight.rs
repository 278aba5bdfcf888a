//! A value read by one caller at a time and reused for a short time: what `/health`,
//! `/health/ready` and `/metrics` read of Redis.
//!
//! Guarantees: however many callers ask at once, one read is in flight (the others wait
//! for it and get its value); a caller within `ttl` of the last read gets that read's
//! value without a new one. A caller that goes away mid-read releases the slot and the
//! next one reads. The wait is bounded by the read's own bound (the probe's timeout).

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct SingleFlight<T> {
    ttl: Duration,
    /// The last value and when its read finished; the lock is held across a read, which
    /// is what makes concurrent callers share it.
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> SingleFlight<T> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The last value if it is younger than `ttl`, else `read`'s (and kept).
    pub async fn get<F, Fut>(&self, read: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref() {
            if at.elapsed() < self.ttl {
                return value.clone();
            }
        }
        let value = read().await;
        *slot = Some((Instant::now(), value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_read_and_a_later_one_reads_again() {
        let cache = Arc::new(SingleFlight::new(Duration::from_millis(250)));
        let reads = Arc::new(AtomicU32::new(0));
        let read = |reads: Arc<AtomicU32>| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reads.fetch_add(1, Ordering::SeqCst) + 1
        };
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (cache, reads) = (cache.clone(), reads.clone());
                tokio::spawn(async move { cache.get(|| read(reads)).await })
            })
            .collect();
        for caller in callers {
            assert_eq!(
                caller.await.expect("caller"),
                1,
                "every caller got the one read"
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(cache.get(|| read(reads.clone())).await, 1, "within the ttl");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            cache.get(|| read(reads.clone())).await,
            2,
            "after it: read again"
        );
    }
}
