//! The registry as the rest of the service sees it: the last good copy, swapped whole.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::Registry;

/// Cheap to clone; every clone sees the same registry.
#[derive(Clone, Default)]
pub struct Handle(Arc<ArcSwapOption<Registry>>);

impl Handle {
    /// The registry (empty if none is known yet).
    pub fn current(&self) -> Arc<Registry> {
        self.0.load_full().unwrap_or_default()
    }

    /// Whether a registry is known (read, or loaded from the stored copy).
    pub fn known(&self) -> bool {
        self.0.load().is_some()
    }

    pub fn set(&self, registry: Registry) {
        self.0.store(Some(Arc::new(registry)));
    }
}
