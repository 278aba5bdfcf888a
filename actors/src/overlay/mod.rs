//! The overlay: what Redis holds for each buffered transaction besides its stream entry,
//! and the one home of its layout.
//!
//! Guarantees:
//! - every Redis key of a site is built here ([`Keys`]), and nowhere else in Rust; the Lua
//!   scripts receive theirs from here (in `KEYS`, or as a prefix in `ARGV`);
//! - a lifecycle state is a [`TxState`] wherever Rust reads or compares one; the scripts
//!   write the same lowercase names (a test holds them to it).

mod keys;
pub(crate) mod scripts;
mod state;

pub use keys::Keys;
pub use state::{TxState, UnknownState};
