//! Transactions: what an operation becomes once validated.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The tables the read endpoints serve (merged reads and their index sets). Writes go to
/// any table of the model registry, by name; these are the ones the fixed read routes know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    ExecutedObsUnit,
    RawDataPackage,
    RawDataFile,
}

impl Table {
    pub const ALL: [Self; 3] = [
        Self::ExecutedObsUnit,
        Self::RawDataPackage,
        Self::RawDataFile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ExecutedObsUnit => "executed_obs_unit",
            Self::RawDataPackage => "raw_data_package",
            Self::RawDataFile => "raw_data_file",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Columns the overlay keeps an index set for, so merged reads find buffered records
    /// by these columns without scanning keys.
    pub fn indexed_columns(self) -> &'static [&'static str] {
        match self {
            Self::ExecutedObsUnit => &["obs_unit_id"],
            Self::RawDataPackage => &["executed_obs_unit_id"],
            Self::RawDataFile => &["executed_obs_unit_id", "raw_data_package_id"],
        }
    }

    /// The index columns of the table named `name` (none for a table no read route serves).
    pub fn indexed_columns_of(name: &str) -> &'static [&'static str] {
        Self::from_name(name).map_or(&[], Self::indexed_columns)
    }
}

/// A row's key: a UUID made at the summit (as text), or the integer or text key a client
/// gave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RowId {
    Int(i64),
    Text(String),
}

impl RowId {
    /// The key as text: what names its overlay record and its index entries.
    pub fn text(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Text(s) => s.clone(),
        }
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Self::Text(s) => Uuid::try_parse(s).ok(),
            Self::Int(_) => None,
        }
    }

    /// The key as a JSON value (what a `$ref` to it resolves to).
    pub fn json(&self) -> Value {
        match self {
            Self::Int(n) => (*n).into(),
            Self::Text(s) => s.clone().into(),
        }
    }

    /// A key given as JSON: an integer or a string.
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self::Text(s.clone())),
            Value::Number(n) => n.as_i64().map(Self::Int),
            _ => None,
        }
    }
}

impl From<Uuid> for RowId {
    fn from(id: Uuid) -> Self {
        Self::Text(id.to_string())
    }
}

impl std::fmt::Display for RowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// One row change, applied in order, all or nothing, on the primary by the batch function
/// (which checks `table` against its allowlist and finds the key column itself). `table`
/// is a table of `schema.domain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// `values` hold the key column too.
    Insert {
        table: String,
        id: RowId,
        values: Map<String, Value>,
    },
    Update {
        table: String,
        id: RowId,
        set: Map<String, Value>,
    },
    Delete {
        table: String,
        id: RowId,
    },
}

impl Step {
    pub fn table(&self) -> &str {
        match self {
            Self::Insert { table, .. }
            | Self::Update { table, .. }
            | Self::Delete { table, .. } => table,
        }
    }

    pub fn id(&self) -> &RowId {
        match self {
            Self::Insert { id, .. } | Self::Update { id, .. } | Self::Delete { id, .. } => id,
        }
    }

    /// The columns this step writes (for an insert: the whole row; for a delete: none).
    pub fn columns(&self) -> Option<&Map<String, Value>> {
        match self {
            Self::Insert { values, .. } => Some(values),
            Self::Update { set, .. } => Some(set),
            Self::Delete { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: Uuid,
    pub site: String,
    pub op: String,
    pub created_at: DateTime<Utc>,
    pub steps: Vec<Step>,
}

/// A validated write turned into its transaction, plus the answer the client gets once it
/// is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub tx: Transaction,
    /// `true` for creates (`201`), `false` for updates (`200`).
    pub created: bool,
    pub response: Value,
    /// For `POST /transactions`: each step's id, op, table and its row's id (or its row
    /// count), kept with the lifecycle.
    pub summary: Option<Value>,
    /// How many rows (transaction steps) each request step made, in order.
    pub rows: Vec<usize>,
}

/// A timestamp truncated to microseconds, PostgreSQL's precision.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}
