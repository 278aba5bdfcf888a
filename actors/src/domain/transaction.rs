//! Transactions: what an operation becomes once validated.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::requests::*;

/// The ops tables the ingest path writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    ExecutedObsUnit,
    RawDataPackage,
    RawDataFile,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Self::ExecutedObsUnit => "executed_obs_unit",
            Self::RawDataPackage => "raw_data_package",
            Self::RawDataFile => "raw_data_file",
        }
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
}

/// One row change. Applied in order, all or nothing, on the primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    Insert {
        table: Table,
        id: Uuid,
        values: Map<String, Value>,
    },
    Update {
        table: Table,
        id: Uuid,
        set: Map<String, Value>,
    },
}

impl Step {
    pub fn table(&self) -> Table {
        match self {
            Self::Insert { table, .. } | Self::Update { table, .. } => *table,
        }
    }

    pub fn id(&self) -> Uuid {
        match self {
            Self::Insert { id, .. } | Self::Update { id, .. } => *id,
        }
    }

    /// The columns this step writes (for an insert: the whole row).
    pub fn columns(&self) -> &Map<String, Value> {
        match self {
            Self::Insert { values, .. } => values,
            Self::Update { set, .. } => set,
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

/// A validated operation turned into its transaction, plus the answer the client gets
/// once it is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub tx: Transaction,
    /// `true` for creates (`201`), `false` for updates (`200`).
    pub created: bool,
    pub response: Value,
}

/// A timestamp truncated to microseconds, PostgreSQL's precision.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn meta(m: &Option<Map<String, Value>>) -> Value {
    m.clone().map_or_else(|| json!({}), Value::Object)
}

fn file_row(f: &RawDataFileCreate, id: Uuid, now: DateTime<Utc>) -> Step {
    Step::Insert {
        table: Table::RawDataFile,
        id,
        values: object(json!({
            "id": id,
            "name": f.name,
            "relative_path": f.relative_path,
            "executed_obs_unit_id": f.executed_obs_unit_id,
            "raw_data_package_id": f.raw_data_package_id,
            "size": f.size,
            "checksum": f.checksum.to_ascii_lowercase(),
            "checksum_algorithm": f.checksum_algorithm.as_str(),
            "file_type": f.file_type,
            "created_at": f.created_at.map_or(now, micros),
            "meta": meta(&f.meta),
        })),
    }
}

fn start_row(r: &StartExecutedObsUnit, id: Uuid, now: DateTime<Utc>) -> Step {
    Step::Insert {
        table: Table::ExecutedObsUnit,
        id,
        values: object(json!({
            "id": id,
            "obs_unit_id": r.obs_unit_id,
            "status": "running",
            "start_time": r.start_time.map_or(now, micros),
            "end_time": null,
            "instrument_module": r.instrument_module,
            "meta": meta(&r.meta),
        })),
    }
}

fn finish_update(id: Uuid, body: &FinishExecutedObsUnit, now: DateTime<Utc>) -> Step {
    let mut set = object(json!({
        "status": body.status.as_str(),
        "end_time": body.end_time.map_or(now, micros),
    }));
    if let Some(m) = &body.meta {
        set.insert("meta".into(), Value::Object(m.clone()));
    }
    Step::Update {
        table: Table::ExecutedObsUnit,
        id,
        set,
    }
}

fn package_row(p: &RawDataPackageCreate, id: Uuid, now: DateTime<Utc>) -> Step {
    Step::Insert {
        table: Table::RawDataPackage,
        id,
        values: object(json!({
            "id": id,
            "name": p.name,
            "executed_obs_unit_id": p.executed_obs_unit_id,
            "relative_path": p.relative_path,
            "status": "building",
            "size": null,
            "checksum": null,
            "checksum_algorithm": null,
            "file_count": null,
            "created_at": now,
            "finalized_at": null,
            "meta": meta(&p.meta),
        })),
    }
}

fn finalize_update(id: Uuid, body: &FinalizeRawDataPackage, now: DateTime<Utc>) -> Step {
    let mut set = object(json!({ "status": "complete", "finalized_at": now }));
    if let Some(size) = body.size {
        set.insert("size".into(), size.into());
    }
    if let Some(c) = &body.checksum {
        set.insert("checksum".into(), c.to_ascii_lowercase().into());
        let algorithm = body.checksum_algorithm.unwrap_or_default();
        set.insert("checksum_algorithm".into(), algorithm.as_str().into());
    }
    if let Some(n) = body.file_count {
        set.insert("file_count".into(), n.into());
    }
    if let Some(m) = &body.meta {
        set.insert("meta".into(), Value::Object(m.clone()));
    }
    Step::Update {
        table: Table::RawDataPackage,
        id,
        set,
    }
}

impl Operation {
    /// Builds the transaction of a validated operation. `new_id` yields fresh time-ordered
    /// ids (a parameter so tests can pin them).
    pub fn build(&self, site: &str, now: DateTime<Utc>, mut new_id: impl FnMut() -> Uuid) -> Built {
        // PostgreSQL keeps microseconds: truncating here makes the overlay's after-image and
        // the replica's row of the same record identical.
        let now = micros(now);
        let tx_id = new_id();
        let steps = self.steps(now, &mut new_id);
        let ids: Vec<Uuid> = steps.iter().map(Step::id).collect();
        let mut response = match self {
            Self::BulkCreateRawDataFiles { .. } => json!({ "ids": ids, "count": ids.len() }),
            _ => json!({ "id": ids.first() }),
        };
        response["transaction_id"] = json!(tx_id);
        response["status"] = json!("buffered");
        Built {
            tx: Transaction {
                id: tx_id,
                site: site.to_owned(),
                op: self.name().to_owned(),
                created_at: now,
                steps,
            },
            created: !self.kind().needs_id(),
            response,
        }
    }

    /// The rows the operation writes, in request order; creates draw their ids here.
    fn steps(&self, now: DateTime<Utc>, new_id: &mut impl FnMut() -> Uuid) -> Vec<Step> {
        match self {
            Self::StartExecutedObsUnit(r) => vec![start_row(r, new_id(), now)],
            Self::FinishExecutedObsUnit { id, body } => vec![finish_update(*id, body, now)],
            Self::CreateRawDataFile(f) => vec![file_row(f, new_id(), now)],
            Self::BulkCreateRawDataFiles { files } => {
                files.iter().map(|f| file_row(f, new_id(), now)).collect()
            }
            Self::CreateRawDataPackage(p) => vec![package_row(p, new_id(), now)],
            Self::FinalizeRawDataPackage { id, body } => vec![finalize_update(*id, body, now)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> Uuid {
        let mut n = 0u128;
        move || {
            n += 1;
            Uuid::from_u128(n)
        }
    }

    #[test]
    fn start_becomes_one_insert_with_the_answer_ids() {
        let op = Operation::StartExecutedObsUnit(StartExecutedObsUnit {
            obs_unit_id: 7,
            start_time: None,
            instrument_module: Some("prime-cam".into()),
            meta: None,
        });
        let now = Utc::now();
        let built = op.build("summit", now, ids());
        assert!(built.created);
        assert_eq!(built.tx.id, Uuid::from_u128(1));
        assert_eq!(built.tx.op, "executed_obs_units.start");
        assert_eq!(built.tx.steps.len(), 1);
        let step = &built.tx.steps[0];
        assert_eq!(step.id(), Uuid::from_u128(2));
        assert_eq!(step.columns()["status"], "running");
        assert_eq!(
            step.columns()["start_time"],
            json!(micros(now)),
            "truncated to PostgreSQL's microseconds"
        );
        let nanos = micros(now).timestamp_subsec_nanos();
        assert_eq!(nanos % 1000, 0);
        assert_eq!(
            built.response,
            json!({"id": Uuid::from_u128(2), "transaction_id": Uuid::from_u128(1), "status": "buffered"})
        );
    }

    #[test]
    fn bulk_keeps_request_order_in_steps_and_answer() {
        let file = |name: &str| RawDataFileCreate {
            name: name.into(),
            relative_path: name.into(),
            executed_obs_unit_id: Uuid::nil(),
            raw_data_package_id: None,
            size: 1,
            checksum: "AB".repeat(32),
            checksum_algorithm: ChecksumAlgorithm::Sha256,
            file_type: None,
            created_at: None,
            meta: None,
        };
        let op = Operation::BulkCreateRawDataFiles {
            files: vec![file("a"), file("b"), file("c")],
        };
        let built = op.build("summit", Utc::now(), ids());
        let names: Vec<_> = built
            .tx
            .steps
            .iter()
            .map(|s| s.columns()["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("a"), json!("b"), json!("c")]);
        let ids: Vec<Uuid> = built.tx.steps.iter().map(Step::id).collect();
        assert_eq!(built.response["ids"], json!(ids));
        assert_eq!(built.response["count"], 3);
        assert_eq!(
            built.tx.steps[0].columns()["checksum"],
            "ab".repeat(32),
            "checksums are normalised"
        );
    }

    #[test]
    fn finish_is_an_update_answered_with_200() {
        let id = Uuid::from_u128(99);
        let op = Operation::FinishExecutedObsUnit {
            id,
            body: FinishExecutedObsUnit {
                status: FinishStatus::Aborted,
                end_time: None,
                meta: None,
            },
        };
        let built = op.build("summit", Utc::now(), ids());
        assert!(!built.created);
        assert!(
            matches!(&built.tx.steps[0], Step::Update { id: i, set, .. } if *i == id && set["status"] == "aborted")
        );
    }
}
