//! The body of `POST /transactions` as the live model registry makes it: one step schema
//! per table and op, each column's JSON schema from its type, nullability and default, so
//! that a request the document allows is one the builder accepts.
//!
//! Two rules JSON Schema cannot say, stated in the description instead: `step_id`s are
//! unique within a transaction, and `{"$ref": STEP}` (which the schema does not list as a
//! value) names an earlier step of one row.

use ops_db_actors::domain::builder::MAX_STEPS;
use ops_db_actors::domain::schema::{JSON_VALUE, NO_NUL};
use ops_db_actors::registry::{Column, ColumnType, Registry, TableModel};
use serde_json::{json, Map, Value};

/// Years 1900 to 9999, as the builder accepts them.
const YEARS: &str = "^(19|[2-9][0-9])[0-9]{2}-";

const DESCRIPTION: &str = "Steps applied in order, all or nothing. Each step's `table` is a \
    table of the model registry (`schema.tables`, read from ops-db's live schema): the \
    variants below are its tables and ops. Also: `step_id`s are unique within the \
    transaction, and any value may instead be `{\"$ref\": STEP}`, the key of the row an \
    earlier step of one row wrote (keys of UUID columns are made at the summit). JSON Schema \
    cannot state these two rules; a request that breaks one gets 422.";

/// The request schema (a `json`/`jsonb` column's values refer to the document's
/// [`JSON_VALUE`], which holds it from the start).
pub fn request(registry: &Registry, max_rows: usize) -> Value {
    let mut variants = Vec::new();
    for table in registry.tables.values() {
        variants.extend(steps(table, max_rows));
    }
    let request = json!({
        "type": "object",
        "description": DESCRIPTION,
        "additionalProperties": false,
        "required": ["steps"],
        "properties": {"steps": {
            "type": "array", "minItems": 1, "maxItems": MAX_STEPS,
            "items": {"oneOf": variants},
        }},
    });
    request
}

fn steps(table: &TableModel, max_rows: usize) -> Vec<Value> {
    let Some(key) = table.key_column() else {
        return Vec::new();
    };
    let create = values(table, true);
    let update = values(table, false);
    let mut bulk_update = update.clone();
    bulk_update["properties"][&table.key] = key_of(key);
    bulk_update["required"] = json!([table.key]);
    bulk_update["minProperties"] = json!(2);
    let rows =
        |item: Value| json!({"type": "array", "minItems": 1, "maxItems": max_rows, "items": item});
    vec![
        step(table, "create", [("values", create.clone())]),
        step(table, "update", [("id", key_of(key)), ("values", update)]),
        step(table, "delete", [("id", key_of(key))]),
        step(table, "bulk_create", [("rows", rows(create))]),
        step(table, "bulk_update", [("rows", rows(bulk_update))]),
    ]
}

fn step<const N: usize>(table: &TableModel, op: &str, fields: [(&str, Value); N]) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "step_id".into(),
        json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}),
    );
    properties.insert("op".into(), json!({"const": op}));
    properties.insert("table".into(), json!({"const": table.name}));
    let mut required = vec![json!("step_id"), json!("op"), json!("table")];
    for (name, schema) in fields {
        properties.insert(name.into(), schema);
        required.push(json!(name));
    }
    json!({
        "type": "object",
        "title": format!("{op} {}", table.name),
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

/// A row's values: for a create, every writable column, the NOT NULL ones without a default
/// required; for an update, every writable column but the key, at least one.
fn values(table: &TableModel, create: bool) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for c in table.columns.iter().filter(|c| !c.generated) {
        let is_key = c.name == table.key;
        if is_key && !create {
            continue;
        }
        let schema = if is_key {
            key_of(c)
        } else {
            column(c, c.nullable)
        };
        properties.insert(c.name.clone(), schema);
        let made_here = is_key && c.ty == ColumnType::Uuid;
        if create && !c.nullable && !c.has_default && !made_here {
            required.push(json!(c.name));
        }
    }
    let mut schema = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "required": required,
    });
    if !create {
        schema["minProperties"] = json!(1);
    }
    schema
}

fn column(c: &Column, nullable: bool) -> Value {
    if c.ty == ColumnType::Json {
        // A value of the column itself (not one nested in it) that is an object of `$ref`
        // alone is a reference; and JSON's `null` is SQL's NULL for a NOT NULL column.
        let mut not = vec![
            json!({"type": "object", "required": ["$ref"], "maxProperties": 1,
                                  "properties": {"$ref": {"type": "string"}}}),
        ];
        if !nullable {
            not.push(json!({"type": "null"}));
        }
        return json!({
            "allOf": [of_type(&c.ty), {"not": {"anyOf": not}}],
            "description": c.type_name,
        });
    }
    let mut schema = of_type(&c.ty);
    if let (Some(max), true) = (c.max_chars, schema["type"] == "string") {
        schema["maxLength"] = json!(max);
    }
    schema["description"] = json!(c.type_name);
    if nullable {
        json!({"anyOf": [schema, {"type": "null"}]})
    } else {
        schema
    }
}

/// A key: its column's schema; a text key names its overlay record, so it has no `:`.
fn key_of(c: &Column) -> Value {
    let mut schema = column(c, false);
    if schema["pattern"] == NO_NUL {
        schema["pattern"] = json!("^[^:\\u0000]+$");
    }
    schema
}

fn of_type(ty: &ColumnType) -> Value {
    match ty {
        ColumnType::Boolean => json!({"type": "boolean"}),
        ColumnType::Integer { min, max } => {
            json!({"type": "integer", "minimum": min, "maximum": max})
        }
        ColumnType::Number => json!({"type": "number"}),
        ColumnType::Text | ColumnType::Other => json!({"type": "string", "pattern": NO_NUL}),
        ColumnType::Uuid => json!({"type": "string", "format": "uuid"}),
        ColumnType::Timestamp => {
            json!({"type": "string", "format": "date-time", "pattern": YEARS})
        }
        ColumnType::Date => json!({"type": "string", "format": "date", "pattern": YEARS}),
        ColumnType::Json => json!({"$ref": format!("#/components/schemas/{JSON_VALUE}")}),
        ColumnType::Enum { labels } => json!({"type": "string", "enum": labels}),
        ColumnType::Array { element } => {
            json!({"type": "array", "items": {"anyOf": [of_type(element), {"type": "null"}]}})
        }
    }
}
