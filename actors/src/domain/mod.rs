//! The domain of the ingest path: what observatory software may write, how it is
//! validated, and the transactions it becomes.
//!
//! A [`Transaction`] is an ordered list of [`Step`]s (insert or update of one row of an ops
//! table) with a summit-generated, time-ordered (v7) id. It is the unit that is buffered,
//! forwarded and committed atomically on the primary.

pub mod builder;
mod presets;
mod request;
mod requests;
#[cfg(feature = "openapi")]
pub mod schema;
mod transaction;
mod validate;
mod values;
pub mod whole;

pub use presets::{Preset, PresetError, Presets};
pub use request::{StepOp, StepRequest, TransactionRequest};
pub use requests::{
    ChecksumAlgorithm, FinalizeRawDataPackage, FinishExecutedObsUnit, FinishStatus, Operation,
    OperationKind, RawDataFileCreate, RawDataPackageCreate, StartExecutedObsUnit,
};
pub use transaction::{micros, Built, RowId, Step, Table, Transaction};
pub use validate::{IdempotencyKey, Limits, ValidationError};
