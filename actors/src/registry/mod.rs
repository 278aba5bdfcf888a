//! The model registry: the shape of ops-db's writable tables, read from the live schema.
//!
//! ops-db's tables belong to ops-db (DESIGN §6, §10). For the tables an operator allows
//! (`schema.tables`), the service reads columns, types, nullability, defaults, the primary
//! key and the foreign keys from its read source, keeps the last good copy durably, and
//! validates every write against it at ingest. The batch function on the primary checks
//! each step's table against the allowlist held there, never against the JSON alone.
//!
//! - `read.rs`: one read of the catalog (`pg_catalog`) into a [`Registry`], and the listed
//!   tables it leaves out ([`Skipped`]); `types.rs`: the type mapping;
//! - `handle.rs`: [`Handle`], the registry in use, where it came from, the last error;
//! - `refresh.rs`: [`Refresher`], the stored copy in Redis at start, then a read every
//!   `schema.refresh`, the copy rewritten when the read differs.

mod handle;
mod model;
mod read;
mod refresh;
mod types;

pub use handle::{Handle, Source, Status};
pub use model::{Column, ColumnType, ForeignKey, Registry, TableModel};
pub use read::{read, Read, ReadError, SkipReason, Skipped, READ_TIMEOUT, STATEMENT_TIMEOUT};
pub use refresh::{RefreshConfig, Refresher};

/// Whether `name` is a name the service accepts for a schema, table or column: a lower-case
/// SQL identifier that needs no quoting (`[a-z_][a-z0-9_]*`, at most 63 bytes, PostgreSQL's
/// limit). Anything else (quotes, dots, upper case, unicode) is refused before it reaches
/// SQL text, whatever the quoting there.
pub fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain_lower_case_names() {
        for ok in ["raw_data_file", "_x", "t1", &"a".repeat(63)] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1t",
            "Raw",
            "a.b",
            "a\"b",
            "a b",
            "tä",
            "a;drop",
            &"a".repeat(64),
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
