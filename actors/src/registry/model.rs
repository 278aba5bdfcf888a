//! The registry's data: what the read source said about each writable table. Serialisable,
//! because the last good copy is kept durably (so the service starts while the read source
//! is down).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Every writable table the read source knows, by name (within `schema.domain`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub tables: BTreeMap<String, TableModel>,
    /// When the read source was read.
    pub read_at: Option<DateTime<Utc>>,
}

impl Registry {
    pub fn table(&self, name: &str) -> Option<&TableModel> {
        self.tables.get(name)
    }
}

/// One table: its columns in the table's order, its one-column primary key, its foreign
/// keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableModel {
    /// The schema it lives in (`schema.domain`).
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary key's column. A table without a one-column primary key is not in the
    /// registry (an update or delete could not name its row).
    pub key: String,
    pub foreign_keys: Vec<ForeignKey>,
}

impl TableModel {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn key_column(&self) -> Option<&Column> {
        self.column(&self.key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The type as PostgreSQL prints it (`format_type`), for messages.
    pub type_name: String,
    pub nullable: bool,
    /// Has a default (or is an identity or serial column): an insert may leave it out.
    pub has_default: bool,
    /// `GENERATED ALWAYS` (identity or stored): never written.
    pub generated: bool,
    /// `varchar(n)` / `char(n)`: at most `n` characters.
    pub max_chars: Option<u32>,
}

/// What a JSON value must be to fit a column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnType {
    Boolean,
    /// `smallint`, `integer`, `bigint`: a JSON integer within the bounds.
    Integer {
        min: i64,
        max: i64,
    },
    /// `real`, `double precision`, `numeric`: a JSON number.
    Number,
    /// `text`, `varchar`, `char`, `citext`, ...: a JSON string.
    Text,
    Uuid,
    /// `timestamptz` and `timestamp`: an RFC 3339 string.
    Timestamp,
    /// `date`: `YYYY-MM-DD`.
    Date,
    /// `json`, `jsonb`: any JSON value.
    Json,
    /// An enum type: one of its labels.
    Enum {
        labels: Vec<String>,
    },
    /// An array of the element type: a JSON array.
    Array {
        element: Box<ColumnType>,
    },
    /// Anything else (`inet`, `interval`, a domain, ...): a JSON string, checked by the
    /// primary.
    Other,
}

/// `column` refers to `ref_table`.`ref_column` (a one-column foreign key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForeignKey {
    pub column: String,
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_column: String,
}
