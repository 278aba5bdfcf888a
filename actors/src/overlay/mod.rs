//! The overlay: what Redis holds for each buffered transaction besides its stream entry,
//! and the one home of its layout.
//!
//! Guarantees:
//! - every Redis key of a site is built here ([`Keys`]), and nowhere else in Rust; the Lua
//!   scripts receive theirs from here (in `KEYS`, or as a prefix in `ARGV`);
//! - an overlay record is written as an [`OverlayWrite`] and read as an [`OverlayRecord`]:
//!   the record hash's fields are named in `record.rs` and the scripts only;
//! - a lifecycle state is a [`TxState`] wherever Rust reads or compares one; the scripts
//!   write the same lowercase names (a test holds them to it).

mod keys;
mod record;
pub(crate) mod scripts;
mod state;

pub use keys::Keys;
pub use record::{index_value, OverlayRecord, OverlayWrite};
pub use state::{TxState, UnknownState};
