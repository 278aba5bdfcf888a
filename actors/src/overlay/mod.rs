//! The overlay: what Redis holds for each buffered transaction besides its stream entry,
//! and the one home of its layout.
//!
//! Guarantees:
//! - every Redis key of a site is built here ([`Keys`]), and nowhere else in Rust; the Lua
//!   scripts receive theirs from here (in `KEYS`, or as a prefix in `ARGV`).

mod keys;
pub(crate) mod scripts;

pub use keys::Keys;
