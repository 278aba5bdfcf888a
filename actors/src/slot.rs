//! A swappable handle to the current incarnation of a supervised actor.
//!
//! A restarted actor has a new `ActorRef`. Facades and sibling actors hold a [`Slot`]
//! instead of a ref: the supervisor stores the new ref after each (re)start and clears it
//! when the child dies, so callers see "not running" (and answer 503) rather than sending
//! into a dead mailbox. Reads are lock-free: the slot sits on the ingest hot path.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ractor::ActorRef;

pub struct Slot<M> {
    current: Arc<ArcSwapOption<ActorRef<M>>>,
}

impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
        }
    }
}

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Self {
            current: Arc::new(ArcSwapOption::empty()),
        }
    }
}

impl<M> Slot<M> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The running incarnation, if any.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.current.load_full().map(|r| (*r).clone())
    }

    pub fn set(&self, actor: ActorRef<M>) {
        self.current.store(Some(Arc::new(actor)));
    }

    pub fn clear(&self) {
        self.current.store(None);
    }
}
