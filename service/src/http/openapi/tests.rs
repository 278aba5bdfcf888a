use std::collections::BTreeSet;

use chrono::Utc;
use ops_db_actors::domain::{Operation as Write, RawDataFileCreate, StartExecutedObsUnit};
use serde_json::Value;
use uuid::Uuid;

use super::*;

/// Every (method, path) of the document.
fn documented(doc: &OpenApi) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ];
        for (method, operation) in methods {
            if operation.is_some() {
                set.insert((method.to_owned(), path.clone()));
            }
        }
    }
    set
}

fn registered() -> Vec<Route> {
    super::super::api()
        .iter()
        .flat_map(|routes| routes.table().to_vec())
        .collect()
}

/// The router registers every route through `Routes`: its table is what it serves, and
/// the document must say exactly that, both ways.
#[test]
fn the_document_has_every_route_of_the_router_and_no_other() {
    let routes: BTreeSet<(String, String)> = registered()
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    let documented = documented(&build());
    let missing: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes not in the document: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented routes that do not exist: {extra:?}"
    );
    assert_eq!(routes.len(), registered().len(), "a route registered twice");
}

fn json() -> Value {
    serde_json::from_str(&build().to_json().expect("serialises")).expect("JSON")
}

#[test]
fn every_reference_resolves_within_the_document() {
    let (found, unresolved) = references(&json());
    assert!(!found.is_empty());
    assert!(unresolved.is_empty(), "do not resolve: {unresolved:?}");
}

/// The security of each operation is the access its route was registered with: the scope
/// its middleware checks is the one its operation names.
#[test]
fn each_operation_names_the_access_its_route_was_registered_with() {
    let doc = json();
    for route in registered() {
        let operation = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        let description = operation["description"].as_str().unwrap_or_default();
        let security = &operation["security"];
        match (route.access, route.access.scope_name()) {
            (Access::Open, _) => {
                assert!(security.is_null(), "{route:?}");
                assert!(description.ends_with("No token needed."), "{route:?}");
            }
            (_, Some(scope)) => {
                assert_eq!(
                    security,
                    &serde_json::json!([{ BEARER: [scope] }]),
                    "{route:?}"
                );
                assert!(
                    description.contains(&format!("scope `{scope}`")),
                    "{route:?}"
                );
                assert!(operation["responses"]["403"].is_object(), "{route:?}");
            }
            (_, None) => {
                assert_eq!(security, &serde_json::json!([{ BEARER: [] }]), "{route:?}");
                assert!(description.contains("any valid token"), "{route:?}");
            }
        }
        if route.access != Access::Open {
            assert!(operation["responses"]["401"].is_object(), "{route:?}");
        }
    }
}

fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .expect(schema)
        .keys()
        .cloned()
        .collect()
}

fn answered(write: &Write) -> BTreeSet<String> {
    let built = ops_db_actors::domain::builder::build(
        write,
        "test",
        Utc::now(),
        &crate::config::default_presets(),
        None,
        &ops_db_actors::domain::Limits { max_bulk_files: 10 },
        &mut Uuid::now_v7,
    )
    .expect("built");
    built
        .response
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

/// The acknowledgements are described by hand: they must name what a write answers.
#[test]
fn the_acknowledgements_describe_what_writes_answer() {
    let doc = json();
    let start = Write::StartExecutedObsUnit(StartExecutedObsUnit {
        obs_unit_id: 1,
        start_time: None,
        instrument_module: None,
        meta: None,
    });
    assert_eq!(answered(&start), properties(&doc, "WriteAck"));
    let file = RawDataFileCreate {
        name: "a".into(),
        relative_path: "a".into(),
        executed_obs_unit_id: Uuid::now_v7(),
        raw_data_package_id: None,
        size: 1,
        checksum: "0".repeat(64),
        checksum_algorithm: Default::default(),
        file_type: None,
        created_at: None,
        meta: None,
    };
    let bulk = Write::BulkCreateRawDataFiles { files: vec![file] };
    assert_eq!(answered(&bulk), properties(&doc, "BulkWriteAck"));
    let steps = serde_json::from_value(serde_json::json!({"steps": [
        {"step_id": "d", "op": "delete", "table": "raw_data_file", "id": Uuid::now_v7()}]}))
    .expect("a transaction");
    let transaction = Write::Transaction(steps);
    assert_eq!(answered(&transaction), properties(&doc, "TransactionAck"));
}

/// Every write path of the table, with its row's request type as the body.
#[test]
fn every_write_path_of_the_table_is_documented_with_its_request_type() {
    let doc = json();
    for spec in &crate::operations::OPERATIONS {
        let body = (spec.schema)();
        let expected = serde_json::to_value(&body.schema).expect("a schema");
        for path in spec.paths {
            let method = spec.method.as_str().to_lowercase();
            let operation = &doc["paths"][path][&method];
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            assert_eq!(schema, &expected, "{method} {path}");
            assert_eq!(operation["tags"][0], "writes");
        }
    }
}

/// The error schema describes `stored` as what a write's 503 says: `false` or `"unknown"`.
#[test]
fn the_error_schema_describes_stored() {
    let doc = json();
    let stored = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["stored"];
    let text = stored.to_string();
    assert!(
        stored["oneOf"].as_array().is_some_and(|one| one.len() == 2),
        "{text}"
    );
    assert!(
        text.contains("[false]") && text.contains("[\"unknown\"]"),
        "{text}"
    );
}
