//! `POST /transactions`: one transaction of several steps over the model registry's tables
//! (DESIGN §10), as a client sends it. Validated and turned into a [`Transaction`] by
//! [`super::builder`].
//!
//! [`Transaction`]: super::Transaction

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A transaction of steps applied all or nothing, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransactionRequest {
    /// At least one step, at most 100; `step_id`s unique.
    pub steps: Vec<StepRequest>,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepOp {
    /// Insert one row (`values`).
    Create,
    /// Change the columns `values` names of the row `id`.
    Update,
    /// Delete the row `id`.
    Delete,
    /// Insert `rows`.
    BulkCreate,
    /// Change rows: each of `rows` names its row by the table's key column.
    BulkUpdate,
}

impl StepOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::BulkCreate => "bulk_create",
            Self::BulkUpdate => "bulk_update",
        }
    }

    pub fn is_bulk(self) -> bool {
        matches!(self, Self::BulkCreate | Self::BulkUpdate)
    }
}

/// One step. A value anywhere in `id`, `values` or `rows` may be `{"$ref": STEP}`: the id
/// of an earlier step's row (a UUID key made at the summit, or the key the step was given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// Names the step in the answer and in references: 1 to 64 letters, digits, `_`, `-`
    /// or `.`.
    pub step_id: String,
    pub op: StepOp,
    /// A table of the model registry (`schema.tables`).
    pub table: String,
    /// `update` and `delete`: the row's key (or a reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// `create` and `update`: column → value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Map<String, Value>>,
    /// `bulk_create` and `bulk_update`: one column → value object per row, at most
    /// `buffer.max_bulk_files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Map<String, Value>>>,
}
