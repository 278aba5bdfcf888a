//! The table of write operations: one row per operation with its name (as stored with each
//! transaction and as the TCP facade's `op`), its HTTP method and paths, and the request
//! type its body is decoded into. The HTTP router (one generic write handler), the TCP
//! facade and the README's endpoint table follow it; a test keeps the README in step.

use axum::routing::MethodFilter;
use ops_db_actors::domain::{
    FinalizeRawDataPackage, FinishExecutedObsUnit, Operation, OperationKind, RawDataFileCreate,
    RawDataPackageCreate, StartExecutedObsUnit,
};
use uuid::Uuid;

use crate::ops::{decode, ApiError};

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
    pub method: Method,
    /// The first is the documented path; the others are spellings the original accepted
    /// (without the trailing slash). `{id}` is the record an update changes.
    pub paths: &'static [&'static str],
    /// Decodes the body into the operation's request type; `id` is the path's record id
    /// (nil for creates).
    parse: fn(Uuid, &[u8]) -> Result<Operation, ApiError>,
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

pub const OPERATIONS: [OperationSpec; 6] = [
    OperationSpec {
        kind: OperationKind::StartExecutedObsUnit,
        method: Method::Post,
        paths: &["/executed_obs_units/start"],
        parse: |_, body| {
            Ok(Operation::StartExecutedObsUnit(decode::<
                StartExecutedObsUnit,
            >(body)?))
        },
    },
    OperationSpec {
        kind: OperationKind::FinishExecutedObsUnit,
        method: Method::Put,
        paths: &["/executed_obs_units/{id}/finish"],
        parse: |id, body| {
            let body = decode::<FinishExecutedObsUnit>(body)?;
            Ok(Operation::FinishExecutedObsUnit { id, body })
        },
    },
    OperationSpec {
        kind: OperationKind::CreateRawDataFile,
        method: Method::Post,
        paths: &["/raw_data_files/", "/raw_data_files"],
        parse: |_, body| {
            Ok(Operation::CreateRawDataFile(decode::<RawDataFileCreate>(
                body,
            )?))
        },
    },
    OperationSpec {
        kind: OperationKind::BulkCreateRawDataFiles,
        method: Method::Post,
        paths: &["/raw_data_files/bulk"],
        parse: |_, body| {
            let files = decode::<Vec<RawDataFileCreate>>(body)?;
            Ok(Operation::BulkCreateRawDataFiles { files })
        },
    },
    OperationSpec {
        kind: OperationKind::CreateRawDataPackage,
        method: Method::Post,
        paths: &["/raw_data_package/", "/raw_data_package"],
        parse: |_, body| {
            let body = decode::<RawDataPackageCreate>(body)?;
            Ok(Operation::CreateRawDataPackage(body))
        },
    },
    OperationSpec {
        kind: OperationKind::FinalizeRawDataPackage,
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
    },
];

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
