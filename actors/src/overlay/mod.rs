//! The overlay: what Redis holds for each buffered transaction besides its stream entry
//! (its lifecycle, the after-images of the rows it wrote and their index entries), and
//! the one home of its layout, its scripts and the merged reads built on it.
//!
//! Guarantees:
//! - every Redis key of a site is built here ([`Keys`]), and nowhere else in Rust; the Lua
//!   scripts receive theirs from here (in `KEYS`, or as a prefix in `ARGV`: each script's
//!   header says which);
//! - an overlay record is written as an [`OverlayWrite`] and read as an [`OverlayRecord`]:
//!   the record hash's fields are named in `record.rs` and the scripts only;
//! - a lifecycle state is a [`TxState`] wherever Rust reads or compares one; the scripts
//!   write the same lowercase names (a test holds them to it);
//! - reads merge the read source's rows with the overlay ([`Reads`]): the overlay wins
//!   until its writer is replicated, then the read source answers the same record;
//! - a dead transaction never hides an earlier write of its record, and a record is in
//!   the index sets of its current values only (`scripts/overlay_release.lua`).
//!
//! Lifecycle of a transaction: `buffered` (`buffer.lua`) → `forwarded` with its commit LSN
//! (`settle.lua`) → `replicated` (`replicated.lua`, which releases the overlay records it
//! was the latest writer of), or → `dead` (`settle.lua`, which undoes its overlay writes:
//! a record it wrote over an earlier, still pending write reads as that write left it).

mod keys;
mod merge;
mod page;
mod reads;
mod record;
pub(crate) mod scripts;
mod source;
mod state;

pub use keys::Keys;
pub use page::{BadLimit, PageRequest, DEFAULT_LIMIT, MAX_LIMIT, NESTED_LIMIT};
pub use reads::{IndexValue, Listed, ReadError, Reads, SOURCE_STATEMENT_TIMEOUT};
pub use record::{OverlayRecord, OverlayWrite};
pub use scripts::abort_staging;
#[cfg(feature = "fault-injection")]
pub use scripts::buffer_transaction;
pub use scripts::oldest_ids;
#[cfg(feature = "fault-injection")]
pub use scripts::{commit_staged, stage_transaction};
pub use scripts::{STAGE_RECORDS, STAGING_ABANDONED};
pub use state::{TxState, UnknownState};
