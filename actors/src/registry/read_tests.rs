//! The pure part of the read: catalog rows → registry.

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

fn col(table: &str, name: &str, oid: i64) -> ColumnRow {
    ColumnRow {
        table: table.into(),
        name: name.into(),
        type_oid: oid,
        typmod: -1,
        type_name: "x".into(),
        not_null: false,
        has_default: false,
        identity: String::new(),
        generated: String::new(),
    }
}

fn constraint(table: &str, kind: &str, columns: &[&str]) -> ConstraintRow {
    ConstraintRow {
        table: table.into(),
        kind: kind.into(),
        columns: i32::try_from(columns.len()).unwrap(),
        column: columns.first().map(|c| (*c).to_owned()),
        ref_schema: (kind == "f").then(|| "public".into()),
        ref_table: (kind == "f").then(|| "parent".into()),
        ref_column: (kind == "f").then(|| "id".into()),
    }
}

fn relation(name: &str, kind: &str) -> RelationRow {
    RelationRow {
        name: name.into(),
        kind: kind.into(),
    }
}

#[test]
fn identity_and_generated_columns_have_defaults_and_only_always_is_never_written() {
    let rows = CatalogRows {
        relations: vec![relation("t", "r")],
        columns: vec![
            ColumnRow {
                identity: "a".into(),
                not_null: true,
                ..col("t", "always", 20)
            },
            ColumnRow {
                identity: "d".into(),
                not_null: true,
                ..col("t", "by_default", 20)
            },
            ColumnRow {
                generated: "s".into(),
                ..col("t", "stored", 20)
            },
            ColumnRow {
                has_default: true,
                not_null: true,
                ..col("t", "defaulted", 20)
            },
            col("t", "plain", 20),
        ],
        types: vec![builtin(20, "int8")],
        constraints: vec![constraint("t", "p", &["always"])],
    };
    let read = rows.build("public", &["t".into()]);
    let t = read.registry.table("t").expect("t");
    let flags: Vec<(&str, bool, bool, bool)> = t
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.nullable, c.has_default, c.generated))
        .collect();
    assert_eq!(
        flags,
        [
            ("always", false, true, true),
            ("by_default", false, true, false),
            ("stored", true, false, true),
            ("defaulted", false, true, false),
            ("plain", true, false, false),
        ]
    );
}

#[test]
fn tables_without_a_one_column_key_or_missing_are_skipped_with_a_reason() {
    let rows = CatalogRows {
        relations: vec![
            relation("good", "r"),
            relation("pair", "r"),
            relation("loose", "r"),
            relation("view", "v"),
        ],
        columns: vec![col("good", "id", 20), col("good", "parent_id", 20)],
        types: vec![builtin(20, "int8")],
        constraints: vec![
            constraint("good", "p", &["id"]),
            constraint("good", "f", &["parent_id"]),
            constraint("good", "f", &["a", "b"]),
            constraint("pair", "p", &["a", "b"]),
        ],
    };
    let listed: Vec<String> = ["good", "pair", "loose", "view", "gone"]
        .map(String::from)
        .to_vec();
    let read = rows.build("public", &listed);
    assert_eq!(
        read.registry.tables.keys().collect::<Vec<_>>(),
        ["good"],
        "only the table with a one-column key"
    );
    let good = read.registry.table("good").expect("good");
    assert_eq!(good.key, "id");
    assert_eq!(
        good.foreign_keys,
        [ForeignKey {
            column: "parent_id".into(),
            ref_schema: "public".into(),
            ref_table: "parent".into(),
            ref_column: "id".into(),
        }],
        "the two-column foreign key is left out"
    );
    let skipped: Vec<(&str, SkipReason)> = read
        .skipped
        .iter()
        .map(|s| (s.table.as_str(), s.reason.clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("pair", SkipReason::CompositeKey(2)),
            ("loose", SkipReason::NoPrimaryKey),
            ("view", SkipReason::NotATable("v".into())),
            ("gone", SkipReason::Missing),
        ]
    );
}
