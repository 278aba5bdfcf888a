//! The transaction builder: a [`TransactionRequest`] checked as a whole against the model
//! registry and turned into the [`Step`]s of one transaction (DESIGN §10). The fixed
//! endpoints come through here too, as presets (`presets.rs`).
//!
//! Guarantees, for a request it accepts:
//! - every step's table is a table of the registry, every column one of its columns, not a
//!   generated one; every value fits its column's type and nullability (`values.rs`);
//! - a create gives every NOT NULL column without a default; its UUID key is made here
//!   (time-ordered v7) unless given; any other key must be given;
//! - a `{"$ref": STEP}` names an earlier step of one row, and is replaced by that row's key:
//!   the stored transaction holds only values;
//! - `step_id`s are unique; at most [`MAX_STEPS`] steps and `Limits::max_bulk_files` rows per
//!   bulk step.
//!
//! Every refusal is a [`ValidationError`] naming the step and the field
//! (`steps[2].rows[7].name`). CHECK constraints, foreign keys and triggers are the
//! primary's (a reference to a parent that does not exist is reported by the referential
//! check at ingest, or dead-lettered).
//!
//! Without a registry (none read yet and no stored copy) only presets are built: their
//! request types are checked already, their key column is `id` and their UUIDs made here.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::presets::Presets;
use super::request::{StepOp, StepRequest, TransactionRequest};
use super::requests::Operation;
use super::transaction::{micros, Built, RowId, Step, Transaction};
use super::validate::{Limits, ValidationError};
use super::values;
use crate::registry::{ColumnType, Registry, TableModel};

/// Most steps in one transaction.
pub const MAX_STEPS: usize = 100;

/// The key column of a table the builder knows nothing of (presets without a registry).
const DEFAULT_KEY: &str = "id";

type Check<T = ()> = Result<T, ValidationError>;

fn invalid(code: &'static str, field: String, message: impl Into<String>) -> ValidationError {
    ValidationError::new(code, field, message)
}

/// The rows a step wrote, as its answer and its references see them.
#[derive(Debug, Clone, PartialEq)]
pub enum StepIds {
    One(RowId),
    Many(Vec<RowId>),
}

impl StepIds {
    pub fn answer(&self) -> Value {
        match self {
            Self::One(id) => json!({ "id": id.json() }),
            Self::Many(ids) => json!({ "ids": ids.iter().map(RowId::json).collect::<Vec<_>>() }),
        }
    }
}

/// One request step as built: its id, op, table and the rows it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub step_id: String,
    pub op: StepOp,
    pub table: String,
    pub ids: StepIds,
}

/// What the builder made of a request: the steps of the transaction, and per request step
/// its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub planned: Vec<Planned>,
}

impl Plan {
    /// The answer's `steps`: step id → `{"id": …}` or `{"ids": […]}`.
    pub fn answer(&self) -> Value {
        Value::Object(
            self.planned
                .iter()
                .map(|p| (p.step_id.clone(), p.ids.answer()))
                .collect(),
        )
    }

    /// What the lifecycle keeps: each step's id, op, table and row (or row count).
    pub fn summary(&self) -> Value {
        let steps = self.planned.iter().map(|p| {
            let mut s = json!({"step_id": p.step_id, "op": p.op, "table": p.table});
            match &p.ids {
                StepIds::One(id) => s["id"] = id.json(),
                StepIds::Many(ids) => s["rows"] = ids.len().into(),
            }
            s
        });
        Value::Array(steps.collect())
    }

    /// How many rows (transaction steps) each request step made, in order.
    pub fn rows(&self) -> Vec<usize> {
        self.planned
            .iter()
            .map(|p| match &p.ids {
                StepIds::One(_) => 1,
                StepIds::Many(ids) => ids.len(),
            })
            .collect()
    }
}

/// Checks `request` against `registry` and builds its steps (taking its values, not
/// copying them); `new_id` makes UUID keys.
pub fn plan(
    request: TransactionRequest,
    registry: Option<&Registry>,
    limits: &Limits,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Check<Plan> {
    if request.steps.is_empty() {
        return Err(invalid(
            "invalid_value",
            "steps".into(),
            "must hold at least one step",
        ));
    }
    if request.steps.len() > MAX_STEPS {
        return Err(invalid(
            "too_many_steps",
            "steps".into(),
            format!(
                "{} steps; at most {MAX_STEPS} are allowed",
                request.steps.len()
            ),
        ));
    }
    let mut builder = Builder {
        registry,
        limits,
        new_id,
        seen: HashMap::new(),
        plan: Plan {
            steps: Vec::new(),
            planned: Vec::new(),
        },
    };
    for (i, step) in request.steps.into_iter().enumerate() {
        builder.step(i, step)?;
    }
    Ok(builder.plan)
}

struct Builder<'a> {
    registry: Option<&'a Registry>,
    limits: &'a Limits,
    new_id: &'a mut dyn FnMut() -> Uuid,
    /// Step ids so far, and the one row each made (`None`: a bulk step).
    seen: HashMap<String, Option<RowId>>,
    plan: Plan,
}

/// Where a step's values live in the request, for field paths (written only for an error:
/// a bulk step's thousand rows cost nothing here).
struct At<'s> {
    /// `steps[2]`
    step: &'s str,
    /// `values`, or the row of `rows`.
    row: Option<usize>,
    table: &'s str,
}

impl At<'_> {
    /// `steps[2].values` or `steps[2].rows[7]`.
    fn part(&self) -> String {
        match self.row {
            None => format!("{}.values", self.step),
            Some(j) => format!("{}.rows[{j}]", self.step),
        }
    }

    fn field(&self, column: &str) -> String {
        format!("{}.{column}", self.part())
    }
}

impl<'a> Builder<'a> {
    fn step(&mut self, i: usize, mut step: StepRequest) -> Check {
        let at = format!("steps[{i}]");
        check_step_id(&at, &step.step_id)?;
        if self.seen.contains_key(&step.step_id) {
            return Err(invalid(
                "duplicate_step_id",
                format!("{at}.step_id"),
                format!("{:?} names an earlier step too", step.step_id),
            ));
        }
        let model = self.table(&at, &step.table)?;
        fields_for_op(&at, &step)?;
        let values = step.values.take().unwrap_or_default();
        let place = At {
            step: &at,
            row: None,
            table: &step.table,
        };
        let ids = match step.op {
            StepOp::Create => StepIds::One(self.insert(&place, model, values)?),
            StepOp::Update => {
                let id = self.key(&format!("{at}.id"), model, step.id.as_ref())?;
                self.update(&place, model, id.clone(), values)?;
                StepIds::One(id)
            }
            StepOp::Delete => {
                let id = self.key(&format!("{at}.id"), model, step.id.as_ref())?;
                self.plan.steps.push(Step::Delete {
                    table: step.table.clone(),
                    id: id.clone(),
                });
                StepIds::One(id)
            }
            StepOp::BulkCreate | StepOp::BulkUpdate => {
                let rows = step.rows.take().unwrap_or_default();
                self.bulk(&at, &step, model, rows)?
            }
        };
        let one = match &ids {
            StepIds::One(id) => Some(id.clone()),
            StepIds::Many(_) => None,
        };
        self.seen.insert(step.step_id.clone(), one);
        self.plan.planned.push(Planned {
            step_id: step.step_id,
            op: step.op,
            table: step.table,
            ids,
        });
        Ok(())
    }

    fn table(&self, at: &str, name: &str) -> Check<Option<&'a TableModel>> {
        let Some(registry) = self.registry else {
            return Ok(None);
        };
        registry.table(name).map(Some).ok_or_else(|| {
            let known: Vec<&str> = registry.tables.keys().map(String::as_str).collect();
            invalid(
                "unknown_table",
                format!("{at}.table"),
                format!(
                    "{name:?} is not a table writes may touch; these are: {}",
                    known.join(", ")
                ),
            )
        })
    }

    fn bulk(
        &mut self,
        at: &str,
        step: &StepRequest,
        model: Option<&TableModel>,
        rows: Vec<Map<String, Value>>,
    ) -> Check<StepIds> {
        if rows.is_empty() {
            return Err(invalid(
                "invalid_value",
                format!("{at}.rows"),
                "must hold at least one row",
            ));
        }
        if rows.len() > self.limits.max_bulk_files {
            return Err(invalid(
                "too_many_rows",
                format!("{at}.rows"),
                format!(
                    "{} rows in one step; at most {} are allowed",
                    rows.len(),
                    self.limits.max_bulk_files
                ),
            ));
        }
        let mut ids = Vec::with_capacity(rows.len());
        for (j, mut row) in rows.into_iter().enumerate() {
            let place = At {
                step: at,
                row: Some(j),
                table: &step.table,
            };
            let id = if step.op == StepOp::BulkCreate {
                self.insert(&place, model, row)?
            } else {
                let key = key_name(model);
                let given = row.remove(key);
                let id = self.key(&place.field(key), model, given.as_ref())?;
                self.update(&place, model, id.clone(), row)?;
                id
            };
            ids.push(id);
        }
        Ok(StepIds::Many(ids))
    }

    /// One row's insert; its key.
    fn insert(
        &mut self,
        at: &At<'_>,
        model: Option<&TableModel>,
        values: Map<String, Value>,
    ) -> Check<RowId> {
        let key = key_name(model);
        let mut row = self.values(at, model, values)?;
        let id = match row.get(key) {
            Some(Value::Null) | None => self.new_key(at, model)?,
            Some(given) => RowId::from_json(given).ok_or_else(|| {
                invalid(
                    "invalid_value",
                    at.field(key),
                    "a key must be a string or an integer",
                )
            })?,
        };
        check_key(&at.field(key), &id)?;
        row.insert(key.to_owned(), id.json());
        if let Some(model) = model {
            complete(at, model, &mut row)?;
        }
        self.plan.steps.push(Step::Insert {
            table: at.table.to_owned(),
            id: id.clone(),
            values: row,
        });
        Ok(id)
    }

    fn update(
        &mut self,
        at: &At<'_>,
        model: Option<&TableModel>,
        id: RowId,
        values: Map<String, Value>,
    ) -> Check {
        let key = key_name(model);
        if values.contains_key(key) {
            return Err(invalid(
                "invalid_value",
                at.field(key),
                "the key column cannot change; the row is named by `id`",
            ));
        }
        if values.is_empty() {
            return Err(invalid(
                "missing_field",
                at.part(),
                "an update must change at least one column",
            ));
        }
        let set = self.values(at, model, values)?;
        self.plan.steps.push(Step::Update {
            table: at.table.to_owned(),
            id,
            set,
        });
        Ok(())
    }

    /// Every value resolved and fitted to its column.
    fn values(
        &self,
        at: &At<'_>,
        model: Option<&TableModel>,
        values: Map<String, Value>,
    ) -> Check<Map<String, Value>> {
        let mut out = Map::new();
        for (name, value) in values {
            let field = at.field(&name);
            let value = self.resolve(&field, value)?;
            let value = match model {
                None => value,
                Some(model) => {
                    let column = model.column(&name).ok_or_else(|| {
                        invalid(
                            "unknown_column",
                            field.clone(),
                            format!("{} has no column {name:?}", model.name),
                        )
                    })?;
                    if column.generated {
                        return Err(invalid(
                            "invalid_value",
                            field,
                            format!("{name} is generated by the database and cannot be written"),
                        ));
                    }
                    values::fit(column, &value)
                        .map_err(|why| invalid("invalid_value", field, why))?
                }
            };
            out.insert(name, value);
        }
        Ok(out)
    }

    /// A value, or the key of the row a `{"$ref": STEP}` names.
    fn resolve(&self, field: &str, value: Value) -> Check<Value> {
        let Some(target) = reference(&value) else {
            return Ok(value);
        };
        match self.seen.get(target) {
            Some(Some(id)) => Ok(id.json()),
            Some(None) => Err(invalid(
                "invalid_reference",
                field.to_owned(),
                format!("step {target:?} wrote several rows; a reference names a step of one row"),
            )),
            None => Err(invalid(
                "unknown_reference",
                field.to_owned(),
                format!("{target:?} is not an earlier step of this transaction"),
            )),
        }
    }

    /// The key of the row an update or delete names.
    fn key(&self, field: &str, model: Option<&TableModel>, given: Option<&Value>) -> Check<RowId> {
        let Some(given) = given else {
            return Err(invalid(
                "missing_field",
                field.to_owned(),
                "names the row to change",
            ));
        };
        let value = self.resolve(field, given.clone())?;
        let value = match model.and_then(TableModel::key_column) {
            Some(column) => values::fit(column, &value)
                .map_err(|why| invalid("invalid_value", field.to_owned(), why))?,
            None => value,
        };
        match RowId::from_json(&value) {
            Some(id) if !value.is_null() => check_key(field, &id).map(|()| id),
            _ => Err(invalid(
                "invalid_value",
                field.to_owned(),
                "a key must be a string or an integer",
            )),
        }
    }

    fn new_key(&mut self, at: &At<'_>, model: Option<&TableModel>) -> Check<RowId> {
        let key = key_name(model);
        match model.and_then(TableModel::key_column) {
            Some(column) if column.ty != ColumnType::Uuid => Err(invalid(
                "missing_value",
                at.field(key),
                format!(
                    "the key {key} ({}) must be given: only UUID keys are made at the summit",
                    column.type_name
                ),
            )),
            _ => Ok(RowId::from((self.new_id)())),
        }
    }
}

/// A key names its overlay record (`…:rec:{table}:{key}`): text keys are not empty and
/// hold no `:`.
fn check_key(field: &str, id: &RowId) -> Check {
    match id {
        RowId::Text(s) if s.is_empty() || s.contains(':') => Err(invalid(
            "invalid_value",
            field.to_owned(),
            "a text key written through the service is not empty and holds no ':'",
        )),
        _ => Ok(()),
    }
}

fn key_name(model: Option<&TableModel>) -> &str {
    model.map_or(DEFAULT_KEY, |m| m.key.as_str())
}

/// `{"$ref": "step"}`: exactly that one member, a string.
pub fn reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(o) if o.len() == 1 => o.get("$ref").and_then(Value::as_str),
        _ => None,
    }
}

/// A create's row made whole: a NOT NULL column without a default must be given; a nullable
/// one without a default is written `null` (what the primary will store), so the overlay's
/// after-image reads like the replica's row.
fn complete(at: &At<'_>, model: &TableModel, row: &mut Map<String, Value>) -> Check {
    for column in &model.columns {
        if row.contains_key(&column.name) || column.has_default || column.generated {
            continue;
        }
        if !column.nullable {
            return Err(invalid(
                "missing_value",
                at.field(&column.name),
                format!(
                    "{} is NOT NULL and has no default: give it a value",
                    column.name
                ),
            ));
        }
        row.insert(column.name.clone(), Value::Null);
    }
    Ok(())
}

fn check_step_id(at: &str, step_id: &str) -> Check {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if step_id.is_empty() || step_id.len() > 64 || !step_id.chars().all(allowed) {
        return Err(invalid(
            "invalid_value",
            format!("{at}.step_id"),
            "must be 1 to 64 letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

/// Each op takes its own fields and no others.
fn fields_for_op(at: &str, step: &StepRequest) -> Check {
    let (id, values, rows) = match step.op {
        StepOp::Create => (false, true, false),
        StepOp::Update => (true, true, false),
        StepOp::Delete => (true, false, false),
        StepOp::BulkCreate | StepOp::BulkUpdate => (false, false, true),
    };
    let given = [
        ("id", step.id.is_some(), id),
        ("values", step.values.is_some(), values),
        ("rows", step.rows.is_some(), rows),
    ];
    // What does not belong first: `rows` on a create says more than a missing `values`.
    if let Some((name, _, _)) = given
        .iter()
        .find(|(_, present, wanted)| *present && !*wanted)
    {
        return Err(invalid(
            "unexpected_field",
            format!("{at}.{name}"),
            format!("a {} step takes no {name}", step.op.as_str()),
        ));
    }
    for (name, present, wanted) in given {
        if wanted && !present {
            return Err(invalid(
                "missing_field",
                format!("{at}.{name}"),
                format!("a {} step needs {name}", step.op.as_str()),
            ));
        }
    }
    Ok(())
}

/// Builds the transaction of a write: a preset's or a `POST /transactions`'. `registry`
/// is `None` only when none is known yet (the caller refuses `POST /transactions` then).
pub fn build(
    op: &Operation,
    site: &str,
    now: DateTime<Utc>,
    presets: &Presets,
    registry: Option<&Registry>,
    limits: &Limits,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Check<Built> {
    let now = micros(now);
    let tx_id = new_id();
    let plan = plan(presets.request(op, now), registry, limits, new_id)?;
    let (mut response, summary) = match op {
        Operation::Transaction(_) => (json!({ "steps": plan.answer() }), Some(plan.summary())),
        Operation::BulkCreateRawDataFiles { .. } => {
            let ids: Vec<Value> = plan.steps.iter().map(|s| s.id().json()).collect();
            (json!({ "ids": ids, "count": ids.len() }), None)
        }
        _ => (
            json!({ "id": plan.steps.first().map(|s| s.id().json()) }),
            None,
        ),
    };
    response["transaction_id"] = json!(tx_id);
    response["status"] = json!("buffered");
    let rows = plan.rows();
    Ok(Built {
        tx: Transaction {
            id: tx_id,
            site: site.to_owned(),
            op: op.name().to_owned(),
            created_at: now,
            steps: plan.steps,
        },
        created: !op.kind().needs_id(),
        response,
        summary,
        rows,
    })
}

/// The request's field a transaction step's `column` came from: `steps[2].rows[7].size`
/// for `POST /transactions`, `[7].size` for a bulk preset, else the column.
pub fn field_of(op: &Operation, rows: &[usize], tx_step: usize, column: &str) -> String {
    let mut first = 0;
    for (i, n) in rows.iter().enumerate() {
        if tx_step < first + n {
            let j = tx_step - first;
            return match op {
                Operation::Transaction(request) => match request.steps.get(i) {
                    Some(step) if step.op.is_bulk() => format!("steps[{i}].rows[{j}].{column}"),
                    Some(StepRequest {
                        op: StepOp::Create | StepOp::Update,
                        ..
                    }) => {
                        format!("steps[{i}].values.{column}")
                    }
                    _ => format!("steps[{i}].{column}"),
                },
                Operation::BulkCreateRawDataFiles { .. } => format!("[{j}].{column}"),
                _ => column.to_owned(),
            };
        }
        first += n;
    }
    column.to_owned()
}

#[cfg(test)]
pub(crate) mod tests;
