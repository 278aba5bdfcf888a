//! `error.stored`: what a write's 503 says about whether it may have been stored.

use serde::Serialize;

/// Whether a write answered 503 may have been stored: serialised as `false` or
/// `"unknown"` (never `true`: a stored write is acknowledged, or replayed on a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Nothing was stored.
    No,
    /// The write may have been stored.
    Unknown,
}

impl Serialize for Stored {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::No => serializer.serialize_bool(false),
            Self::Unknown => serializer.serialize_str("unknown"),
        }
    }
}

/// The OpenAPI schema of [`Stored`]: `false` or `"unknown"`.
pub(super) fn schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([false]))
                .description(Some("nothing was stored")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["unknown"]))
                .description(Some(
                    "the write may have been stored: retry with the same idempotency key",
                )),
        )
        .build();
    Schema::OneOf(one_of)
}
