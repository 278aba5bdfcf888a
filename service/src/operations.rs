//! The table of write operations: one row per operation with its name (as stored with each
//! transaction and as the TCP facade's `op`), its HTTP method and paths, and the request
//! type its body is decoded into (and described by, in the OpenAPI document). The HTTP
//! router (one generic write handler), the OpenAPI document's write paths, the TCP facade
//! and the README's endpoint table follow it; a test keeps the README in step.

use axum::http::StatusCode;
use axum::routing::MethodFilter;
use ops_db_actors::domain::{
    FinalizeRawDataPackage, FinishExecutedObsUnit, Operation, OperationKind, RawDataFileCreate,
    RawDataPackageCreate, StartExecutedObsUnit, TransactionRequest,
};
use utoipa::openapi::schema::{ArrayBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ops::{decode, parse_id, ApiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
        }
    }

    pub fn filter(self) -> MethodFilter {
        match self {
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
        }
    }
}

/// One write operation.
pub struct OperationSpec {
    pub kind: OperationKind,
    /// What it does, for the OpenAPI document.
    pub summary: &'static str,
    pub method: Method,
    /// The first is the documented path; the others are spellings the original accepted
    /// (without the trailing slash). `{id}` is the record an update changes.
    pub paths: &'static [&'static str],
    /// Decodes the body into the operation's request type; `id` is the path's record id
    /// (nil for creates).
    parse: fn(Uuid, &[u8]) -> Result<Operation, ApiError>,
    /// The body's schema, from the same request type.
    pub schema: fn() -> BodySchema,
}

/// The schema of a request body: a reference to its request type's, and the named schemas
/// (that type's and those it refers to) the document must hold.
pub struct BodySchema {
    pub schema: RefOr<Schema>,
    pub named: Vec<(String, RefOr<Schema>)>,
    /// Whether a request must have one.
    pub required: bool,
}

/// A body of one `T` (with the conditions beside its properties the derive cannot state).
fn body<T: ToSchema>() -> BodySchema {
    let mut named = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut named);
    ops_db_actors::domain::schema::add_conditions(&mut named);
    BodySchema {
        schema: RefOr::Ref(Ref::from_schema_name(T::name())),
        named,
        required: true,
    }
}

/// A body of one `T`, or none at all (as if `{}`).
fn body_or_empty<T: ToSchema>() -> BodySchema {
    BodySchema {
        required: false,
        ..body::<T>()
    }
}

/// A body of a JSON array of `T`s, at least one.
fn array<T: ToSchema>() -> BodySchema {
    let one = body::<T>();
    BodySchema {
        schema: ArrayBuilder::new()
            .items(one.schema)
            .min_items(Some(1))
            .into(),
        ..one
    }
}

impl OperationSpec {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn path(&self) -> &'static str {
        self.paths[0]
    }

    pub fn parse(&self, id: Uuid, body: &[u8]) -> Result<Operation, ApiError> {
        (self.parse)(id, body)
    }
}

pub const OPERATIONS: [OperationSpec; 7] = [
    OperationSpec {
        kind: OperationKind::StartExecutedObsUnit,
        summary: "Start an executed obs unit",
        method: Method::Post,
        paths: &["/executed_obs_units/start"],
        parse: |_, body| {
            Ok(Operation::StartExecutedObsUnit(decode::<
                StartExecutedObsUnit,
            >(body)?))
        },
        schema: body::<StartExecutedObsUnit>,
    },
    OperationSpec {
        kind: OperationKind::FinishExecutedObsUnit,
        summary: "Finish an executed obs unit",
        method: Method::Put,
        paths: &["/executed_obs_units/{id}/finish"],
        parse: |id, body| {
            let body = decode::<FinishExecutedObsUnit>(body)?;
            Ok(Operation::FinishExecutedObsUnit { id, body })
        },
        schema: body::<FinishExecutedObsUnit>,
    },
    OperationSpec {
        kind: OperationKind::CreateRawDataFile,
        summary: "Register a raw data file",
        method: Method::Post,
        paths: &["/raw_data_files/", "/raw_data_files"],
        parse: |_, body| {
            Ok(Operation::CreateRawDataFile(decode::<RawDataFileCreate>(
                body,
            )?))
        },
        schema: body::<RawDataFileCreate>,
    },
    OperationSpec {
        kind: OperationKind::BulkCreateRawDataFiles,
        summary: "Register raw data files in one transaction",
        method: Method::Post,
        paths: &["/raw_data_files/bulk"],
        parse: |_, body| {
            let files = decode::<Vec<RawDataFileCreate>>(body)?;
            Ok(Operation::BulkCreateRawDataFiles { files })
        },
        schema: array::<RawDataFileCreate>,
    },
    OperationSpec {
        kind: OperationKind::CreateRawDataPackage,
        summary: "Create a raw data package",
        method: Method::Post,
        paths: &["/raw_data_package/", "/raw_data_package"],
        parse: |_, body| {
            let body = decode::<RawDataPackageCreate>(body)?;
            Ok(Operation::CreateRawDataPackage(body))
        },
        schema: body::<RawDataPackageCreate>,
    },
    OperationSpec {
        kind: OperationKind::FinalizeRawDataPackage,
        summary: "Finalize a raw data package",
        method: Method::Put,
        paths: &["/raw_data_package/{id}/finalize"],
        parse: |id, body| {
            // Finalize has nothing it must say, so it may come with an empty body.
            let body = if body.iter().all(u8::is_ascii_whitespace) {
                FinalizeRawDataPackage::default()
            } else {
                decode::<FinalizeRawDataPackage>(body)?
            };
            Ok(Operation::FinalizeRawDataPackage { id, body })
        },
        schema: body_or_empty::<FinalizeRawDataPackage>,
    },
    OperationSpec {
        kind: OperationKind::Transaction,
        summary: "Write several rows of ops-db's tables in one transaction",
        method: Method::Post,
        paths: &["/transactions"],
        parse: |_, body| {
            let request = decode::<TransactionRequest>(body)?;
            Ok(Operation::Transaction(request))
        },
        schema: body::<TransactionRequest>,
    },
];

/// Parses the body (and the path id, for updates) of a write into an [`Operation`], by
/// the operation's row.
pub fn parse(kind: OperationKind, id: Option<&str>, body: &[u8]) -> Result<Operation, ApiError> {
    let id = match (kind.needs_id(), id) {
        (true, Some(raw)) => parse_id(raw)?,
        (true, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_field",
                "this operation needs the record's id",
            )
            .with_field("id"))
        }
        (false, _) => Uuid::nil(),
    };
    spec(kind).parse(id, body)
}

/// The row of `kind`.
pub fn spec(kind: OperationKind) -> &'static OperationSpec {
    // Every kind has a row: `every_kind_has_one_row` below.
    OPERATIONS
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or(&OPERATIONS[0])
}

/// The row named `name` (the TCP facade's `op`).
pub fn by_name(name: &str) -> Option<&'static OperationSpec> {
    OPERATIONS.iter().find(|s| s.name() == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn decode_errors_are_classified_and_name_fields() {
        use OperationKind::{BulkCreateRawDataFiles as Bulk, StartExecutedObsUnit as Start};
        let cases: [(OperationKind, &str, u16, &str, Option<&str>); 7] = [
            (Start, r#"{"obs_unit_id": "#, 400, "malformed_json", None),
            (
                Start,
                r#"{"obs_unit_id": 1} trailing"#,
                400,
                "malformed_json",
                None,
            ),
            (Start, "{}", 422, "missing_field", Some("obs_unit_id")),
            (
                Start,
                r#"{"obs_unit_id": 1, "colour": "red"}"#,
                422,
                "unknown_field",
                Some("colour"),
            ),
            (
                Start,
                r#"{"obs_unit_id": "one"}"#,
                422,
                "invalid_field",
                Some("obs_unit_id"),
            ),
            (
                Start,
                r#"{"obs_unit_id": 1, "start_time": "yesterday"}"#,
                422,
                "invalid_field",
                Some("start_time"),
            ),
            (
                Bulk,
                r#"[{"name": "a"}]"#,
                422,
                "missing_field",
                Some("[0].relative_path"),
            ),
        ];
        for (kind, body, status, code, field) in cases {
            let e = parse(kind, None, body.as_bytes()).expect_err(body);
            assert_eq!(
                (e.status.as_u16(), e.code, e.field.as_deref()),
                (status, code, field),
                "{body}"
            );
            assert!(
                !e.message.contains(" at line "),
                "positions are stripped: {}",
                e.message
            );
        }
    }

    #[test]
    fn updates_need_a_uuid_id() {
        let e = parse(
            OperationKind::FinishExecutedObsUnit,
            Some("42"),
            br#"{"status":"completed"}"#,
        )
        .expect_err("bad id");
        assert_eq!((e.code, e.field.as_deref()), ("invalid_id", Some("id")));
        let e = parse(
            OperationKind::FinishExecutedObsUnit,
            None,
            br#"{"status":"completed"}"#,
        )
        .expect_err("no id");
        assert_eq!((e.code, e.field.as_deref()), ("missing_field", Some("id")));
        let ok = parse(
            OperationKind::FinalizeRawDataPackage,
            Some(&Uuid::nil().to_string()),
            b"",
        );
        assert!(ok.is_ok(), "finalize accepts an empty body");
    }

    #[test]
    fn every_kind_has_one_row() {
        for kind in OperationKind::ALL {
            let rows = OPERATIONS.iter().filter(|s| s.kind == kind).count();
            assert_eq!(rows, 1, "{kind:?}");
            assert_eq!(spec(kind).kind, kind);
            assert_eq!(by_name(kind.name()).map(|s| s.kind), Some(kind));
            assert_eq!(spec(kind).path().contains("{id}"), kind.needs_id());
        }
    }

    fn readme() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        std::fs::read_to_string(path).expect("README.md")
    }

    /// The README's write endpoints are exactly the table's: every `| \`POST /path\` |` row.
    #[test]
    fn the_readme_lists_every_write_endpoint_and_no_other() {
        let documented: BTreeSet<String> = readme()
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .filter(|cell| cell.starts_with("POST ") || cell.starts_with("PUT "))
            .map(str::to_owned)
            .collect();
        let table: BTreeSet<String> = OPERATIONS
            .iter()
            .map(|s| format!("{} {}", s.method.as_str(), s.path()))
            .collect();
        assert_eq!(documented, table, "README write endpoints vs the table");
    }

    /// The README names every TCP `op`, in the table's order.
    #[test]
    fn the_readme_names_every_tcp_op() {
        let names: Vec<String> = OPERATIONS
            .iter()
            .map(|s| format!("`{}`", s.name()))
            .collect();
        let sentence = format!("`op` is one of {};", names.join(", "));
        let readme = readme().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(readme.contains(&sentence), "README must say: {sentence}");
    }
}
