//! The type mapping, case by case.

use super::*;

fn builtin(oid: i64, name: &str) -> TypeRow {
    TypeRow {
        oid,
        name: name.into(),
        builtin: true,
        kind: "b".into(),
        category: "S".into(),
        typmod: -1,
        ..TypeRow::default()
    }
}

fn array_of(oid: i64, element: i64) -> TypeRow {
    TypeRow {
        oid,
        name: format!("_{element}"),
        builtin: true,
        kind: "b".into(),
        category: "A".into(),
        element,
        typmod: -1,
        ..TypeRow::default()
    }
}

fn domain(oid: i64, base: i64, typmod: i32) -> TypeRow {
    TypeRow {
        oid,
        name: format!("d{oid}"),
        kind: "d".into(),
        category: "S".into(),
        base,
        typmod,
        ..TypeRow::default()
    }
}

fn types(rows: Vec<TypeRow>) -> HashMap<i64, TypeRow> {
    rows.into_iter().map(|t| (t.oid, t)).collect()
}

#[test]
fn builtin_types_map_to_what_json_must_be() {
    let cases = [
        ("bool", ColumnType::Boolean),
        (
            "int2",
            ColumnType::Integer {
                min: -32768,
                max: 32767,
            },
        ),
        (
            "int4",
            ColumnType::Integer {
                min: -2147483648,
                max: 2147483647,
            },
        ),
        (
            "int8",
            ColumnType::Integer {
                min: i64::MIN,
                max: i64::MAX,
            },
        ),
        ("float4", ColumnType::Number),
        ("float8", ColumnType::Number),
        ("numeric", ColumnType::Number),
        ("text", ColumnType::Text),
        ("varchar", ColumnType::Text),
        ("bpchar", ColumnType::Text),
        ("name", ColumnType::Text),
        ("uuid", ColumnType::Uuid),
        ("timestamptz", ColumnType::Timestamp),
        ("timestamp", ColumnType::Timestamp),
        ("date", ColumnType::Date),
        ("json", ColumnType::Json),
        ("jsonb", ColumnType::Json),
        ("inet", ColumnType::Other),
        ("interval", ColumnType::Other),
        ("char", ColumnType::Other),
        ("bytea", ColumnType::Other),
    ];
    for (name, expected) in cases {
        let t = types(vec![builtin(1, name)]);
        assert_eq!(column_type(&t, 1), expected, "{name}");
    }
}

#[test]
fn a_type_named_like_a_builtin_outside_pg_catalog_is_other() {
    let mut t = builtin(1, "int4");
    t.builtin = false;
    assert_eq!(column_type(&types(vec![t]), 1), ColumnType::Other);
    let mut citext = builtin(2, "citext");
    citext.builtin = false;
    assert_eq!(column_type(&types(vec![citext]), 2), ColumnType::Text);
}

#[test]
fn enums_keep_their_labels_in_order() {
    let t = TypeRow {
        oid: 7,
        name: "state".into(),
        kind: "e".into(),
        category: "E".into(),
        labels: vec!["WAITING".into(), "ARCHIVED".into(), "FAILED".into()],
        ..TypeRow::default()
    };
    assert_eq!(
        column_type(&types(vec![t]), 7),
        ColumnType::Enum {
            labels: vec!["WAITING".into(), "ARCHIVED".into(), "FAILED".into()]
        }
    );
}

#[test]
fn arrays_are_of_their_element_type() {
    let t = types(vec![builtin(25, "text"), array_of(1009, 25)]);
    assert_eq!(
        column_type(&t, 1009),
        ColumnType::Array {
            element: Box::new(ColumnType::Text)
        }
    );
    // An element the read did not bring back, or a broken row: Other, not a panic.
    assert_eq!(
        column_type(&types(vec![array_of(1009, 25)]), 1009),
        ColumnType::Other
    );
    assert_eq!(column_type(&types(vec![]), 1009), ColumnType::Other);
}

#[test]
fn domains_are_their_base_type_when_simple() {
    let t = types(vec![
        builtin(23, "int4"),
        domain(100, 23, -1),
        array_of(1007, 23),
        domain(101, 1007, -1),
        domain(102, 100, -1),
        TypeRow {
            oid: 2249,
            name: "record".into(),
            builtin: true,
            kind: "p".into(),
            category: "P".into(),
            ..TypeRow::default()
        },
        domain(103, 2249, -1),
    ]);
    assert_eq!(
        column_type(&t, 100),
        ColumnType::Integer {
            min: i32::MIN.into(),
            max: i32::MAX.into()
        }
    );
    assert_eq!(column_type(&t, 101), ColumnType::Other, "over an array");
    assert_eq!(column_type(&t, 102), ColumnType::Other, "over a domain");
    assert_eq!(
        column_type(&t, 103),
        ColumnType::Other,
        "over a pseudo-type"
    );
}

#[test]
fn max_chars_comes_from_the_modifier_of_varchar_and_char() {
    let t = types(vec![
        builtin(1043, "varchar"),
        builtin(1042, "bpchar"),
        builtin(25, "text"),
        domain(200, 1043, 24),
    ]);
    assert_eq!(max_chars(&t, 1043, 36), Some(32), "varchar(32)");
    assert_eq!(max_chars(&t, 1043, -1), None, "varchar");
    assert_eq!(max_chars(&t, 1042, 5), Some(1), "char(1)");
    assert_eq!(max_chars(&t, 25, -1), None, "text");
    assert_eq!(
        max_chars(&t, 200, -1),
        Some(20),
        "a domain over varchar(20)"
    );
}
