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
