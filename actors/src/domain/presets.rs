//! Presets: the original's fixed write endpoints, as transactions of the builder.
//!
//! Each fixed operation keeps its route and its request type (checked as before:
//! `validate.rs`), and becomes a [`TransactionRequest`] of one step by its *preset*: the
//! table and, per column, where the value comes from. The presets are declared in one
//! place, `config/presets.toml` (compiled in; a site replaces it with `schema.presets`),
//! so a site adapts them to ops-db's actual columns without changing code.
//!
//! A column's source is one of:
//! - `"$field"`: a field of the request (`$now` is the request's time); for a create an
//!   absent optional field is `null`, for an update the column is left out;
//! - `{ field = "status", map = { completed = "COMPLETED" } }`: a field translated;
//! - anything else: that value, as JSON (`"$$x"` for the string `"$x"`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::request::{StepOp, StepRequest, TransactionRequest};
use super::requests::*;
use super::transaction::micros;
use crate::registry::is_identifier;

/// One preset: the table an operation writes and each column's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub table: String,
    pub columns: BTreeMap<String, Value>,
}

/// The presets of the six fixed operations, by operation name (`executed_obs_units.start`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Presets(pub BTreeMap<String, Preset>);

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source<'a> {
    Field(&'a str),
    Mapped(&'a str, &'a Map<String, Value>),
    Literal(Value),
}

fn source(spec: &Value) -> Source<'_> {
    match spec {
        Value::String(s) if s.starts_with("$$") => Source::Literal(Value::String(s[1..].into())),
        Value::String(s) if s.starts_with('$') => Source::Field(&s[1..]),
        Value::Object(o) => match (o.get("field").and_then(Value::as_str), o.get("map")) {
            (Some(field), Some(Value::Object(map))) if o.len() == 2 => Source::Mapped(field, map),
            _ => Source::Literal(spec.clone()),
        },
        other => Source::Literal(other.clone()),
    }
}

/// What is wrong with a presets file, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {message}")]
pub struct PresetError {
    pub entry: String,
    pub message: String,
}

impl Presets {
    /// Checks that every fixed operation has a preset, every name is a plain SQL name and
    /// every `$field` is one its operation has.
    pub fn check(&self) -> Result<(), PresetError> {
        let error = |entry: String, message: String| PresetError { entry, message };
        for kind in OperationKind::PRESETS {
            let name = kind.name();
            let Some(preset) = self.0.get(name) else {
                return Err(error(
                    name.into(),
                    "missing: every fixed operation needs a preset".into(),
                ));
            };
            if !is_identifier(&preset.table) {
                return Err(error(
                    format!("{name}.table"),
                    format!("{:?} is not a plain SQL name", preset.table),
                ));
            }
            for (column, spec) in &preset.columns {
                let entry = format!("{name}.columns.{column}");
                if !is_identifier(column) {
                    return Err(error(entry, "not a plain SQL name".into()));
                }
                if let Source::Field(f) | Source::Mapped(f, _) = source(spec) {
                    if !kind.fields().contains(&f) {
                        return Err(error(
                            entry,
                            format!(
                                "${f} is not a field of {name}; it has {}",
                                kind.fields().join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(extra) = self.0.keys().find(|k| {
            OperationKind::from_name(k).is_none_or(|kind| !OperationKind::PRESETS.contains(&kind))
        }) {
            return Err(error(extra.clone(), "not a fixed operation".into()));
        }
        Ok(())
    }

    /// The transaction request `op` stands for, at `now`.
    pub fn request(&self, op: &Operation, now: DateTime<Utc>) -> TransactionRequest {
        if let Operation::Transaction(request) = op {
            return request.clone();
        }
        let name = op.name();
        let Some(preset) = self.0.get(name) else {
            // `check` refuses a file without it; an empty step is refused by the builder.
            return TransactionRequest { steps: vec![] };
        };
        let now = micros(now);
        let creates = !op.kind().needs_id();
        let row = |fields: Map<String, Value>| columns(preset, &fields, creates);
        let step = |op: StepOp| StepRequest {
            step_id: name.to_owned(),
            op,
            table: preset.table.clone(),
            id: None,
            values: None,
            rows: None,
        };
        let one = match op {
            Operation::StartExecutedObsUnit(r) => StepRequest {
                values: Some(row(start_fields(r, now))),
                ..step(StepOp::Create)
            },
            Operation::FinishExecutedObsUnit { id, body } => StepRequest {
                id: Some(json!(id)),
                values: Some(row(finish_fields(body, now))),
                ..step(StepOp::Update)
            },
            Operation::CreateRawDataFile(f) => StepRequest {
                values: Some(row(file_fields(f, now))),
                ..step(StepOp::Create)
            },
            Operation::BulkCreateRawDataFiles { files } => StepRequest {
                rows: Some(files.iter().map(|f| row(file_fields(f, now))).collect()),
                ..step(StepOp::BulkCreate)
            },
            Operation::CreateRawDataPackage(p) => StepRequest {
                values: Some(row(package_fields(p, now))),
                ..step(StepOp::Create)
            },
            Operation::FinalizeRawDataPackage { id, body } => StepRequest {
                id: Some(json!(id)),
                values: Some(row(finalize_fields(body, now))),
                ..step(StepOp::Update)
            },
            Operation::Transaction(request) => return request.clone(),
        };
        TransactionRequest { steps: vec![one] }
    }
}

/// A row of `preset` from the request's fields.
fn columns(preset: &Preset, fields: &Map<String, Value>, creates: bool) -> Map<String, Value> {
    let mut row = Map::new();
    for (column, spec) in &preset.columns {
        let value = match source(spec) {
            Source::Literal(v) => Some(v),
            Source::Field(f) => fields.get(f).cloned(),
            Source::Mapped(f, map) => {
                fields
                    .get(f)
                    .map(|v| match v.as_str().and_then(|s| map.get(s)) {
                        Some(mapped) => mapped.clone(),
                        None => v.clone(),
                    })
            }
        };
        match value {
            Some(v) => {
                row.insert(column.clone(), v);
            }
            None if creates => {
                row.insert(column.clone(), Value::Null);
            }
            None => {}
        }
    }
    row
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(mut m) => {
            m.retain(|_, v| !v.is_null());
            m
        }
        _ => Map::new(),
    }
}

fn time(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    t.map_or(now, micros)
}

fn meta(m: &Option<Map<String, Value>>) -> Value {
    m.clone().map_or_else(|| json!({}), Value::Object)
}

fn start_fields(r: &StartExecutedObsUnit, now: DateTime<Utc>) -> Map<String, Value> {
    fields(json!({
        "obs_unit_id": r.obs_unit_id,
        "start_time": time(r.start_time, now),
        "instrument_module": r.instrument_module,
        "meta": meta(&r.meta),
        "now": now,
    }))
}

fn finish_fields(b: &FinishExecutedObsUnit, now: DateTime<Utc>) -> Map<String, Value> {
    fields(json!({
        "status": b.status.as_str(),
        "end_time": time(b.end_time, now),
        "meta": b.meta,
        "now": now,
    }))
}

fn file_fields(f: &RawDataFileCreate, now: DateTime<Utc>) -> Map<String, Value> {
    fields(json!({
        "name": f.name,
        "relative_path": f.relative_path,
        "executed_obs_unit_id": f.executed_obs_unit_id,
        "raw_data_package_id": f.raw_data_package_id,
        "size": f.size,
        "checksum": f.checksum.to_ascii_lowercase(),
        "checksum_algorithm": f.checksum_algorithm.as_str(),
        "file_type": f.file_type,
        "created_at": time(f.created_at, now),
        "meta": meta(&f.meta),
        "now": now,
    }))
}

fn package_fields(p: &RawDataPackageCreate, now: DateTime<Utc>) -> Map<String, Value> {
    fields(json!({
        "name": p.name,
        "executed_obs_unit_id": p.executed_obs_unit_id,
        "relative_path": p.relative_path,
        "meta": meta(&p.meta),
        "now": now,
    }))
}

fn finalize_fields(b: &FinalizeRawDataPackage, now: DateTime<Utc>) -> Map<String, Value> {
    let algorithm = b
        .checksum
        .as_ref()
        .map(|_| b.checksum_algorithm.unwrap_or_default().as_str());
    fields(json!({
        "size": b.size,
        "checksum": b.checksum.as_ref().map(|c| c.to_ascii_lowercase()),
        "checksum_algorithm": algorithm,
        "file_count": b.file_count,
        "meta": b.meta,
        "now": now,
    }))
}

impl OperationKind {
    /// The fixed operations (every kind but `transactions`, the last of `ALL`).
    pub const PRESETS: &'static [Self] = match Self::ALL.split_last() {
        Some((_, fixed)) => fixed,
        None => &[],
    };

    /// The fields a preset of this operation may use (`$field`).
    pub fn fields(self) -> &'static [&'static str] {
        const FILE: &[&str] = &[
            "name",
            "relative_path",
            "executed_obs_unit_id",
            "raw_data_package_id",
            "size",
            "checksum",
            "checksum_algorithm",
            "file_type",
            "created_at",
            "meta",
            "now",
        ];
        match self {
            Self::StartExecutedObsUnit => &[
                "obs_unit_id",
                "start_time",
                "instrument_module",
                "meta",
                "now",
            ],
            Self::FinishExecutedObsUnit => &["status", "end_time", "meta", "now"],
            Self::CreateRawDataFile | Self::BulkCreateRawDataFiles => FILE,
            Self::CreateRawDataPackage => &[
                "name",
                "executed_obs_unit_id",
                "relative_path",
                "meta",
                "now",
            ],
            Self::FinalizeRawDataPackage => &[
                "size",
                "checksum",
                "checksum_algorithm",
                "file_count",
                "meta",
                "now",
            ],
            Self::Transaction => &[],
        }
    }
}

/// Ids for tests: 1, 2, 3, ...
#[cfg(test)]
pub(crate) fn counting_ids() -> impl FnMut() -> uuid::Uuid {
    let mut n = 0u128;
    move || {
        n += 1;
        uuid::Uuid::from_u128(n)
    }
}
