//! The type mapping: what a JSON value must be to fit a column, from the catalog's rows
//! of its type (a pure function, so every case is a unit test).

use std::collections::HashMap;

use super::ColumnType;

/// A type (`pg_type`) of a column, of an array's elements or under a domain.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub(crate) struct TypeRow {
    pub oid: i64,
    pub name: String,
    /// In `pg_catalog` (so `int4` is PostgreSQL's, not some schema's type of that name).
    pub builtin: bool,
    /// `typtype`: `b` base, `d` domain, `e` enum, `c` composite, `r`/`m` range, `p` pseudo.
    pub kind: String,
    /// `typcategory`: `A` for arrays.
    pub category: String,
    /// `typelem`: an array's element type (0: none).
    pub element: i64,
    /// `typbasetype`: a domain's base type (0: none).
    pub base: i64,
    /// `typtypmod`: a domain's modifier (`varchar(20)`), -1 otherwise.
    pub typmod: i32,
    /// An enum's labels in `enumsortorder`.
    pub labels: Vec<String>,
}

/// What a JSON value must be to fit a column of type `oid`.
pub(crate) fn column_type(types: &HashMap<i64, TypeRow>, oid: i64) -> ColumnType {
    let Some(t) = types.get(&oid) else {
        return ColumnType::Other;
    };
    match (t.kind.as_str(), t.category.as_str()) {
        ("d", _) => match types.get(&t.base) {
            // A domain over a plain type or an enum: its base's; its checks are the primary's.
            Some(base) if matches!(base.kind.as_str(), "b" | "e") && base.category != "A" => {
                scalar(base)
            }
            _ => ColumnType::Other,
        },
        (_, "A") if t.element != 0 => match types.get(&t.element) {
            // PostgreSQL has no arrays of arrays: the element is a scalar or a domain.
            Some(element) if element.category != "A" => ColumnType::Array {
                element: Box::new(column_type(types, element.oid)),
            },
            _ => ColumnType::Other,
        },
        _ => scalar(t),
    }
}

/// A type that is neither a domain nor an array.
fn scalar(t: &TypeRow) -> ColumnType {
    if t.kind == "e" {
        return ColumnType::Enum {
            labels: t.labels.clone(),
        };
    }
    let integer = |min: i64, max: i64| ColumnType::Integer { min, max };
    match (t.builtin, t.name.as_str()) {
        (true, "bool") => ColumnType::Boolean,
        (true, "int2") => integer(i16::MIN.into(), i16::MAX.into()),
        (true, "int4") => integer(i32::MIN.into(), i32::MAX.into()),
        (true, "int8") => integer(i64::MIN, i64::MAX),
        (true, "float4" | "float8" | "numeric") => ColumnType::Number,
        (true, "text" | "varchar" | "bpchar" | "name") => ColumnType::Text,
        // An extension's type: in whatever schema it was installed.
        (_, "citext") if t.kind == "b" => ColumnType::Text,
        (true, "uuid") => ColumnType::Uuid,
        (true, "timestamptz" | "timestamp") => ColumnType::Timestamp,
        (true, "date") => ColumnType::Date,
        (true, "json" | "jsonb") => ColumnType::Json,
        _ => ColumnType::Other,
    }
}

/// `varchar(n)` / `char(n)` (the column's or its domain's): `n`.
pub(crate) fn max_chars(
    types: &HashMap<i64, TypeRow>,
    oid: i64,
    column_typmod: i32,
) -> Option<u32> {
    let t = types.get(&oid)?;
    let (t, typmod) = match t.kind.as_str() {
        "d" => (types.get(&t.base)?, t.typmod),
        _ => (t, column_typmod),
    };
    let bounded = t.builtin && matches!(t.name.as_str(), "varchar" | "bpchar");
    // The modifier counts the 4-byte varlena header (VARHDRSZ).
    (bounded && typmod >= 4)
        .then(|| u32::try_from(typmod - 4).ok())
        .flatten()
}

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
