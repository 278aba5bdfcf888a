//! The parts of the request types' OpenAPI schemas the derive cannot say from a field's
//! type and attributes alone, next to the checks they state (`validate.rs`): `meta`
//! without NUL characters, and a checksum's length per algorithm.

use serde_json::{json, Value};
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};

use utoipa::ToSchema;

use super::{ChecksumAlgorithm, FinalizeRawDataPackage, RawDataFileCreate};

/// The name of the schema of any JSON value without NUL characters (which PostgreSQL's
/// `text` and `jsonb` cannot hold); the document that refers to it holds it.
pub const JSON_VALUE: &str = "JsonValue";

/// A string without NUL characters.
pub const NO_NUL: &str = "^[^\\u0000]*$";

/// Any JSON value without NUL characters, in strings and keys at any depth: the schema
/// named [`JSON_VALUE`].
pub fn json_value() -> Schema {
    let me = || RefOr::Ref(Ref::from_schema_name(JSON_VALUE));
    let of = |ty: Type| ObjectBuilder::new().schema_type(ty);
    AnyOfBuilder::new()
        .description(Some("Any JSON value without NUL characters"))
        .item(of(Type::String).pattern(Some(NO_NUL)))
        .item(of(Type::Number))
        .item(of(Type::Boolean))
        .item(of(Type::Null))
        .item(ArrayBuilder::new().items(me()))
        .item(
            of(Type::Object)
                .property_names(Some(of(Type::String).pattern(Some(NO_NUL))))
                .additional_properties(Some(me())),
        )
        .into()
}

/// `meta`: a JSON object (or `null`, as if absent) whose keys and values hold no NUL
/// character anywhere.
pub fn meta() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Any JSON object without NUL characters (`\\u0000`) in its keys or values, at any \
             depth: PostgreSQL cannot store them",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_NUL)),
        ))
        .additional_properties(Some(RefOr::Ref(Ref::from_schema_name(JSON_VALUE))))
        .into()
}

/// Every algorithm, in the order of the pattern below.
const ALGORITHMS: [ChecksumAlgorithm; 3] = [
    ChecksumAlgorithm::Md5,
    ChecksumAlgorithm::Sha1,
    ChecksumAlgorithm::Sha256,
];

fn hex(len: usize) -> String {
    format!("^[0-9a-fA-F]{{{len}}}$")
}

/// `checksum` alone: hexadecimal digits, as many as one of the algorithms' digests
/// (which one, the object's [`checksum_rule`] says).
pub fn checksum() -> Schema {
    let lengths: Vec<String> = ALGORITHMS
        .iter()
        .map(|a| format!("[0-9a-fA-F]{{{}}}", a.hex_len()))
        .collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^({})$", lengths.join("|"))))
        .into()
}

/// The same, or `null` (as if absent).
pub fn optional_checksum() -> Schema {
    let mut schema = checksum();
    if let Schema::Object(object) = &mut schema {
        object.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    }
    schema
}

/// What the object says of its `checksum` and `checksum_algorithm` together, as the
/// branches of its `anyOf`: as many hexadecimal digits as the named algorithm's digest, a
/// `checksum` (a string) wherever an algorithm is named, and `sha256`'s length when none is
/// (absent or `null`). Written as one branch per case rather than `if`/`then`, so that a
/// generator picks a case and draws the two fields to fit it.
pub fn checksum_rule() -> Vec<Value> {
    let digits = |a: ChecksumAlgorithm| hex(a.hex_len());
    let mut branches: Vec<Value> = ALGORITHMS
        .iter()
        .map(|&a| {
            json!({
                "properties": {
                    "checksum_algorithm": {"const": a.as_str()},
                    "checksum": {"type": "string", "pattern": digits(a)},
                },
                "required": ["checksum_algorithm", "checksum"],
            })
        })
        .collect();
    branches.push(json!({
        "properties": {
            "checksum_algorithm": {"type": "null"},
            "checksum": {"pattern": digits(ChecksumAlgorithm::default())},
        },
    }));
    branches
}

/// Puts [`checksum_rule`] into the schemas among `named` of the request types with a
/// checksum (a file's, a package's finalisation), as the object's `anyOf` beside its
/// properties.
pub fn add_conditions(named: &mut [(String, RefOr<Schema>)]) {
    let with_checksum = [RawDataFileCreate::name(), FinalizeRawDataPackage::name()];
    for (name, schema) in named.iter_mut() {
        if !with_checksum.iter().any(|n| n.as_ref() == name.as_str()) {
            continue;
        }
        if let RefOr::T(Schema::Object(object)) = schema {
            // utoipa's object has no field for `anyOf` beside `properties`; its extensions
            // are written into the object as they are.
            object
                .extensions
                .get_or_insert_with(Default::default)
                .insert("anyOf".to_owned(), Value::Array(checksum_rule()));
        }
    }
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    #[test]
    fn the_checksum_pattern_admits_each_algorithms_length() {
        let Schema::Object(object) = checksum() else {
            panic!("an object schema")
        };
        assert_eq!(
            object.pattern.as_deref(),
            Some("^([0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
        );
        let rules = checksum_rule();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0]["properties"]["checksum"]["pattern"],
            "^[0-9a-fA-F]{32}$"
        );
        assert_eq!(rules[3]["properties"]["checksum_algorithm"]["type"], "null");
        assert_eq!(
            rules[3]["properties"]["checksum"]["pattern"],
            "^[0-9a-fA-F]{64}$"
        );
    }

    #[test]
    fn the_conditions_land_in_the_object_beside_its_properties() {
        let mut named = vec![
            (
                RawDataFileCreate::name().into_owned(),
                RawDataFileCreate::schema(),
            ),
            (
                FinalizeRawDataPackage::name().into_owned(),
                FinalizeRawDataPackage::schema(),
            ),
        ];
        add_conditions(&mut named);
        let file = serde_json::to_value(&named[0].1).expect("serialises");
        assert_eq!(file["anyOf"].as_array().map(Vec::len), Some(4), "{file}");
        assert!(
            file["properties"]["checksum"]["pattern"].is_string(),
            "{file}"
        );
        assert!(
            file["properties"]["meta"]["propertyNames"].is_object(),
            "{file}"
        );
        let finalize = serde_json::to_value(&named[1].1).expect("serialises");
        assert_eq!(finalize["anyOf"], file["anyOf"], "{finalize}");
    }
}
