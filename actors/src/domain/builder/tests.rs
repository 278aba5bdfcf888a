use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::domain::presets::counting_ids;
use crate::domain::{FinishExecutedObsUnit, FinishStatus, StartExecutedObsUnit};
use crate::registry::{Column, ForeignKey};

fn column(name: &str, ty: ColumnType, nullable: bool, has_default: bool) -> Column {
    Column {
        name: name.into(),
        type_name: format!("{ty:?}"),
        ty,
        nullable,
        has_default,
        generated: false,
        max_chars: None,
    }
}

fn fk(column: &str, table: &str) -> ForeignKey {
    ForeignKey {
        column: column.into(),
        ref_schema: "public".into(),
        ref_table: table.into(),
        ref_column: "id".into(),
    }
}

fn table(
    name: &str,
    key: &str,
    columns: Vec<Column>,
    fks: Vec<ForeignKey>,
) -> (String, TableModel) {
    let model = TableModel {
        schema: "public".into(),
        name: name.into(),
        columns,
        key: key.into(),
        foreign_keys: fks,
    };
    (name.into(), model)
}

const BIGINT: ColumnType = ColumnType::Integer {
    min: i64::MIN,
    max: i64::MAX,
};

/// The stand-in's three tables, as the registry reads them, plus a table with an integer
/// key and an enum.
pub(crate) fn registry() -> Registry {
    use ColumnType::{Json, Text, Timestamp, Uuid as U};
    let tables: BTreeMap<String, TableModel> = [
        table(
            "executed_obs_unit",
            "id",
            vec![
                column("id", U, false, false),
                column("obs_unit_id", BIGINT, false, false),
                column("status", Text, false, false),
                column("start_time", Timestamp, false, false),
                column("end_time", Timestamp, true, false),
                column("instrument_module", Text, true, false),
                column("meta", Json, false, true),
            ],
            vec![fk("obs_unit_id", "obs_unit")],
        ),
        table(
            "raw_data_package",
            "id",
            vec![
                column("id", U, false, false),
                column("name", Text, false, false),
                column("executed_obs_unit_id", U, false, false),
                column("status", Text, false, false),
                column("size", BIGINT, true, false),
                column("created_at", Timestamp, false, false),
                column("meta", Json, false, true),
            ],
            vec![fk("executed_obs_unit_id", "executed_obs_unit")],
        ),
        table(
            "raw_data_file",
            "id",
            vec![
                column("id", U, false, false),
                column("name", Text, false, false),
                column("executed_obs_unit_id", U, false, false),
                column("raw_data_package_id", U, true, false),
                column("size", BIGINT, false, false),
            ],
            vec![
                fk("executed_obs_unit_id", "executed_obs_unit"),
                fk("raw_data_package_id", "raw_data_package"),
            ],
        ),
        table(
            "instrument",
            "code",
            vec![
                column(
                    "state",
                    ColumnType::Enum {
                        labels: vec!["WAITING".into(), "ARCHIVED".into()],
                    },
                    false,
                    true,
                ),
                column("code", BIGINT, false, true),
            ],
            vec![],
        ),
    ]
    .into_iter()
    .collect();
    Registry {
        tables,
        read_at: None,
    }
}

const LIMITS: Limits = Limits { max_bulk_files: 3 };

fn request(steps: Value) -> TransactionRequest {
    serde_json::from_value(json!({ "steps": steps })).expect("a request")
}

fn planned(steps: Value) -> Check<Plan> {
    plan(
        request(steps),
        Some(&registry()),
        &LIMITS,
        &mut counting_ids(),
    )
}

fn refused(steps: Value) -> (String, String) {
    let e = planned(steps.clone()).expect_err(&steps.to_string());
    (e.code.to_owned(), e.field)
}

fn id(n: u128) -> Value {
    json!(Uuid::from_u128(n))
}

#[test]
fn the_designs_example_is_one_transaction_with_references_resolved() {
    let p = planned(json!([
        {"step_id": "obs", "op": "create", "table": "executed_obs_unit",
         "values": {"obs_unit_id": 1, "status": "running", "start_time": "2026-12-05T18:00:00Z"}},
        {"step_id": "pkg", "op": "create", "table": "raw_data_package",
         "values": {"name": "p-001", "executed_obs_unit_id": {"$ref": "obs"}, "status": "building",
                    "created_at": "2026-12-05T18:00:00Z"}},
        {"step_id": "files", "op": "bulk_create", "table": "raw_data_file",
         "rows": [{"name": "a.fits", "executed_obs_unit_id": {"$ref": "obs"},
                   "raw_data_package_id": {"$ref": "pkg"}, "size": 1},
                  {"name": "b.fits", "executed_obs_unit_id": {"$ref": "obs"}, "size": 2}]},
        {"step_id": "done", "op": "update", "table": "executed_obs_unit", "id": {"$ref": "obs"},
         "values": {"status": "completed"}},
    ]))
    .expect("accepted");
    assert_eq!(p.steps.len(), 5, "one step per row");
    let obs = &p.steps[0];
    assert_eq!(obs.id().json(), id(1));
    let Some(values) = obs.columns() else {
        panic!("an insert")
    };
    assert_eq!(values["id"], id(1), "the key is in the row");
    assert_eq!(
        values["end_time"],
        Value::Null,
        "a nullable column without default is null"
    );
    assert!(
        !values.contains_key("meta"),
        "a column with a default is left to it"
    );
    assert_eq!(
        p.steps[1]
            .columns()
            .map(|c| c["executed_obs_unit_id"].clone()),
        Some(id(1))
    );
    let file_a = p.steps[2].columns().cloned().unwrap_or_default();
    assert_eq!(
        (
            file_a["executed_obs_unit_id"].clone(),
            file_a["raw_data_package_id"].clone()
        ),
        (id(1), id(2))
    );
    assert_eq!(
        p.steps[3]
            .columns()
            .map(|c| c["raw_data_package_id"].clone()),
        Some(Value::Null)
    );
    assert!(
        matches!(&p.steps[4], Step::Update { id: i, set, .. } if i.json() == id(1) && set["status"] == "completed")
    );
    assert_eq!(
        p.answer(),
        json!({"obs": {"id": id(1)}, "pkg": {"id": id(2)}, "files": {"ids": [id(3), id(4)]},
               "done": {"id": id(1)}})
    );
    let summary = p.summary();
    assert_eq!(
        summary[2],
        json!({"step_id": "files", "op": "bulk_create", "table": "raw_data_file", "rows": 2})
    );
    assert_eq!(summary[0]["id"], id(1));
}

#[test]
fn every_mistake_is_refused_naming_the_step_and_the_field() {
    let obs = json!({"step_id": "obs", "op": "create", "table": "executed_obs_unit",
        "values": {"obs_unit_id": 1, "status": "running", "start_time": "2026-12-05T18:00:00Z"}});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([{"step_id": "x", "op": "create", "table": "obs_unit", "values": {}}]),
            "unknown_table",
            "steps[0].table",
        ),
        (
            json!([{"step_id": "x", "op": "create", "table": "raw_data_file; drop", "values": {}}]),
            "unknown_table",
            "steps[0].table",
        ),
        (
            json!([obs, {"step_id": "f", "op": "update", "table": "executed_obs_unit", "id": {"$ref": "obs"},
                      "values": {"colour": "red"}}]),
            "unknown_column",
            "steps[1].values.colour",
        ),
        (
            json!([{"step_id": "x", "op": "create", "table": "executed_obs_unit",
                 "values": {"obs_unit_id": "one", "status": "running", "start_time": "2026-12-05T18:00:00Z"}}]),
            "invalid_value",
            "steps[0].values.obs_unit_id",
        ),
        (
            json!([{"step_id": "x", "op": "create", "table": "executed_obs_unit",
                 "values": {"obs_unit_id": 1, "start_time": "2026-12-05T18:00:00Z"}}]),
            "missing_value",
            "steps[0].values.status",
        ),
        (
            json!([{"step_id": "x", "op": "create", "table": "executed_obs_unit",
                 "values": {"obs_unit_id": 1, "status": null, "start_time": "2026-12-05T18:00:00Z"}}]),
            "invalid_value",
            "steps[0].values.status",
        ),
        (
            json!([{"step_id": "p", "op": "create", "table": "raw_data_package",
                 "values": {"name": "p", "executed_obs_unit_id": {"$ref": "obs"}, "status": "b",
                            "created_at": "2026-12-05T18:00:00Z"}}, obs]),
            "unknown_reference",
            "steps[0].values.executed_obs_unit_id",
        ),
        (
            json!([{"step_id": "d", "op": "delete", "table": "raw_data_file", "id": {"$ref": "nowhere"}}]),
            "unknown_reference",
            "steps[0].id",
        ),
        (json!([obs, obs]), "duplicate_step_id", "steps[1].step_id"),
        (
            json!([{"step_id": "", "op": "delete", "table": "raw_data_file", "id": id(1)}]),
            "invalid_value",
            "steps[0].step_id",
        ),
        (
            json!([{"step_id": "f", "op": "bulk_create", "table": "raw_data_file",
                 "rows": [{"name": "a", "executed_obs_unit_id": id(1), "size": 1}]},
                {"step_id": "d", "op": "delete", "table": "raw_data_file", "id": {"$ref": "f"}}]),
            "invalid_reference",
            "steps[1].id",
        ),
        (
            json!([{"step_id": "u", "op": "update", "table": "raw_data_file", "id": id(1),
                 "values": {"id": id(2)}}]),
            "invalid_value",
            "steps[0].values.id",
        ),
        (
            json!([{"step_id": "u", "op": "update", "table": "raw_data_file", "id": id(1), "values": {}}]),
            "missing_field",
            "steps[0].values",
        ),
        (
            json!([{"step_id": "u", "op": "update", "table": "raw_data_file", "values": {"size": 1}}]),
            "missing_field",
            "steps[0].id",
        ),
        (
            json!([{"step_id": "u", "op": "update", "table": "raw_data_file", "id": "not-a-uuid",
                 "values": {"size": 1}}]),
            "invalid_value",
            "steps[0].id",
        ),
        (
            json!([{"step_id": "c", "op": "create", "table": "raw_data_file", "rows": []}]),
            "unexpected_field",
            "steps[0].rows",
        ),
        (
            json!([{"step_id": "b", "op": "bulk_create", "table": "raw_data_file",
                 "rows": [{"name": "a", "executed_obs_unit_id": id(1), "size": 1},
                          {"name": "b", "executed_obs_unit_id": id(1), "size": -1, "sise": 1}]}]),
            "unknown_column",
            "steps[0].rows[1].sise",
        ),
        (
            json!([{"step_id": "b", "op": "bulk_update", "table": "raw_data_file",
                 "rows": [{"size": 1}]}]),
            "missing_field",
            "steps[0].rows[0].id",
        ),
        (
            json!([{"step_id": "b", "op": "bulk_create", "table": "raw_data_file", "rows": [{}, {}, {}, {}]}]),
            "too_many_rows",
            "steps[0].rows",
        ),
        (
            json!([{"step_id": "i", "op": "create", "table": "instrument", "values": {"state": "WAITING"}}]),
            "missing_value",
            "steps[0].values.code",
        ),
        (
            json!([{"step_id": "i", "op": "create", "table": "instrument", "values": {"code": 4, "state": "LOST"}}]),
            "invalid_value",
            "steps[0].values.state",
        ),
        (json!([]), "invalid_value", "steps"),
    ];
    for (steps, code, field) in cases {
        assert_eq!(
            refused(steps.clone()),
            (code.to_owned(), field.to_owned()),
            "{steps}"
        );
    }
    let many: Vec<Value> = (0..=MAX_STEPS)
        .map(|i| json!({"step_id": format!("d{i}"), "op": "delete", "table": "raw_data_file", "id": id(1)}))
        .collect();
    assert_eq!(refused(Value::Array(many)).0, "too_many_steps");
}

#[test]
fn integer_keys_are_given_and_referenced_and_enums_checked() {
    let p = planned(json!([
        {"step_id": "i", "op": "create", "table": "instrument", "values": {"code": 42}},
        {"step_id": "u", "op": "update", "table": "instrument", "id": {"$ref": "i"},
         "values": {"state": "ARCHIVED"}},
        {"step_id": "d", "op": "delete", "table": "instrument", "id": 42},
    ]))
    .expect("accepted");
    assert_eq!(p.steps[0].id(), &RowId::Int(42));
    assert_eq!(p.steps[1].id(), &RowId::Int(42));
    assert!(matches!(
        &p.steps[2],
        Step::Delete {
            id: RowId::Int(42),
            ..
        }
    ));
    let stored = serde_json::to_value(&p.steps[2]).expect("json");
    assert_eq!(
        stored,
        json!({"kind": "delete", "table": "instrument", "id": 42})
    );
}

fn presets() -> Presets {
    serde_json::from_value(json!({
        "executed_obs_units.start": {"table": "executed_obs_unit", "columns": {
            "obs_unit_id": "$obs_unit_id", "status": "running", "start_time": "$start_time",
            "instrument_module": "$instrument_module", "meta": "$meta"}},
        "executed_obs_units.finish": {"table": "executed_obs_unit", "columns": {
            "status": {"field": "status", "map": {"aborted": "failed"}}, "end_time": "$end_time",
            "meta": "$meta"}},
    }))
    .expect("presets")
}

#[test]
fn a_preset_is_one_step_of_the_builder() {
    let start = Operation::StartExecutedObsUnit(StartExecutedObsUnit {
        obs_unit_id: 7,
        start_time: None,
        instrument_module: Some("prime-cam".into()),
        meta: None,
    });
    let now = Utc::now();
    let built = build(
        &start,
        "summit",
        now,
        &presets(),
        Some(&registry()),
        &LIMITS,
        &mut counting_ids(),
    )
    .expect("built");
    assert!(built.created);
    assert_eq!(built.tx.op, "executed_obs_units.start");
    let Some(row) = built.tx.steps[0].columns() else {
        panic!("an insert")
    };
    assert_eq!(
        Value::Object(row.clone()),
        json!({"id": id(2), "obs_unit_id": 7, "status": "running", "start_time": micros(now),
               "end_time": null, "instrument_module": "prime-cam", "meta": {}})
    );
    assert_eq!(
        built.response,
        json!({"id": id(2), "transaction_id": id(1), "status": "buffered"})
    );
    assert_eq!(built.summary, None);

    let finish = Operation::FinishExecutedObsUnit {
        id: Uuid::from_u128(2),
        body: FinishExecutedObsUnit {
            status: FinishStatus::Aborted,
            end_time: None,
            meta: None,
        },
    };
    let built = build(
        &finish,
        "summit",
        now,
        &presets(),
        Some(&registry()),
        &LIMITS,
        &mut counting_ids(),
    )
    .expect("built");
    assert!(!built.created);
    assert!(
        matches!(&built.tx.steps[0], Step::Update { set, .. }
            if Value::Object(set.clone()) == json!({"status": "failed", "end_time": micros(now)})),
        "mapped status, no meta: {:?}",
        built.tx.steps[0]
    );
}

#[test]
fn without_a_registry_presets_are_built_as_declared() {
    let start = Operation::StartExecutedObsUnit(StartExecutedObsUnit {
        obs_unit_id: 7,
        start_time: None,
        instrument_module: None,
        meta: None,
    });
    let built = build(
        &start,
        "s",
        Utc::now(),
        &presets(),
        None,
        &LIMITS,
        &mut counting_ids(),
    )
    .expect("built");
    let row = built.tx.steps[0].columns().cloned().unwrap_or_default();
    assert_eq!(row["id"], id(2));
    assert_eq!(row["instrument_module"], Value::Null);
    assert!(!row.contains_key("end_time"), "only what the preset names");
}
