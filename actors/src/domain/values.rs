//! One JSON value against one column of the model registry: what the primary would refuse
//! (a wrong type, a number out of range, an unknown enum label, a NUL character) refused at
//! ingest instead of as a dead letter days later, and values normalised so that the
//! overlay's after-image reads like the replica's row (UUIDs lower-case, timestamps in
//! microseconds).
//!
//! CHECK constraints, foreign keys and triggers are the primary's: a value they refuse is
//! accepted here and dead-lettered there.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::registry::{Column, ColumnType};

/// Why a value does not fit its column; the caller adds the field path.
pub type Misfit = String;

/// The value to store for `value` in `column`, or why it does not fit. `null` is checked
/// against the column's nullability.
pub fn fit(column: &Column, value: &Value) -> Result<Value, Misfit> {
    if value.is_null() {
        return if column.nullable {
            Ok(Value::Null)
        } else {
            Err(format!("must not be null ({} is NOT NULL)", column.name))
        };
    }
    let fitted = fit_type(&column.ty, value, &column.type_name)?;
    if let (Some(max), Value::String(s)) = (column.max_chars, &fitted) {
        if s.chars().count() > max as usize {
            return Err(format!(
                "must be at most {max} characters ({})",
                column.type_name
            ));
        }
    }
    Ok(fitted)
}

fn fit_type(ty: &ColumnType, value: &Value, type_name: &str) -> Result<Value, Misfit> {
    let expected = |what: &str| format!("must be {what} ({type_name})");
    match ty {
        ColumnType::Boolean => value
            .is_boolean()
            .then(|| value.clone())
            .ok_or_else(|| expected("true or false")),
        ColumnType::Integer { min, max } => match integer(value) {
            Some(n) if (*min..=*max).contains(&n) => Ok(n.into()),
            Some(_) => Err(format!("must be from {min} to {max} ({type_name})")),
            None if whole(value) => Err(format!("must be from {min} to {max} ({type_name})")),
            None => Err(expected("an integer")),
        },
        ColumnType::Number => value
            .is_number()
            .then(|| value.clone())
            .ok_or_else(|| expected("a number")),
        ColumnType::Text | ColumnType::Other => match value {
            Value::String(s) if s.contains('\0') => Err("must not contain NUL characters".into()),
            Value::String(_) => Ok(value.clone()),
            _ if matches!(ty, ColumnType::Other) && (value.is_number() || value.is_boolean()) => {
                Ok(value.clone())
            }
            _ => Err(expected("a string")),
        },
        ColumnType::Uuid => value
            .as_str()
            .and_then(|s| Uuid::try_parse(s).ok())
            .map(|id| Value::String(id.to_string()))
            .ok_or_else(|| expected("a UUID")),
        ColumnType::Timestamp => value
            .as_str()
            .and_then(timestamp)
            .map(Value::String)
            .ok_or_else(|| {
                expected(
                    "an RFC 3339 time between the years 1900 and 9999, e.g. 2026-12-05T18:00:00Z",
                )
            }),
        ColumnType::Date => value
            .as_str()
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .filter(|d| (1900..=9999).contains(&d.year()))
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| expected("a date YYYY-MM-DD between the years 1900 and 9999")),
        ColumnType::Json => {
            if has_nul(value) {
                Err("must not contain NUL characters".into())
            } else {
                Ok(value.clone())
            }
        }
        ColumnType::Enum { labels } => match value.as_str() {
            Some(s) if labels.iter().any(|l| l == s) => Ok(value.clone()),
            _ => Err(format!(
                "must be one of {} ({type_name})",
                labels.join(", ")
            )),
        },
        ColumnType::Array { element } => match value {
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    if item.is_null() {
                        Ok(Value::Null)
                    } else {
                        fit_type(element, item, type_name)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => Err(expected("an array")),
        },
    }
}

/// An integer, also when written with a zero fraction (`3.0`: JSON Schema's integers
/// include it); `None` beyond i64 or with a fraction.
fn integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        // 2^63 is exact in f64: every float below it in magnitude with no fraction fits.
        (f.fract() == 0.0 && f.abs() < 9_223_372_036_854_775_808.0).then_some(f as i64)
    })
}

/// A number without a fraction, however large.
fn whole(value: &Value) -> bool {
    value.as_u64().is_some()
        || value
            .as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// An RFC 3339 time (or, for `timestamp` columns written without a zone, a local
/// date-time taken as UTC) in microseconds, written as the overlay and reads write it.
fn timestamp(text: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })?;
    (1900..=9999).contains(&t.year()).then(|| {
        t.trunc_subsecs(6)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    })
}

/// PostgreSQL's `jsonb` and `text` refuse `\u0000`.
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn column(ty: ColumnType, nullable: bool) -> Column {
        Column {
            name: "c".into(),
            type_name: "t".into(),
            ty,
            nullable,
            has_default: false,
            generated: false,
            max_chars: None,
        }
    }

    #[test]
    fn values_are_checked_and_normalised_by_type() {
        let int4 = ColumnType::Integer {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        };
        let ok: Vec<(ColumnType, Value, Value)> = vec![
            (int4.clone(), json!(7), json!(7)),
            (int4.clone(), json!(7.0), json!(7)),
            (ColumnType::Number, json!(1.5), json!(1.5)),
            (ColumnType::Boolean, json!(true), json!(true)),
            (ColumnType::Text, json!("x"), json!("x")),
            (
                ColumnType::Uuid,
                json!("0190A2B4-1C3D-7E5F-8A9B-0C1D2E3F4A5B"),
                json!("0190a2b4-1c3d-7e5f-8a9b-0c1d2e3f4a5b"),
            ),
            (
                ColumnType::Timestamp,
                json!("2026-12-05T19:00:00.1234567+01:00"),
                json!("2026-12-05T18:00:00.123456Z"),
            ),
            (ColumnType::Date, json!("2026-12-05"), json!("2026-12-05")),
            (ColumnType::Json, json!({"a": [1]}), json!({"a": [1]})),
            (
                ColumnType::Enum {
                    labels: vec!["WAITING".into(), "ARCHIVED".into()],
                },
                json!("ARCHIVED"),
                json!("ARCHIVED"),
            ),
            (
                ColumnType::Array {
                    element: Box::new(ColumnType::Text),
                },
                json!(["a", null]),
                json!(["a", null]),
            ),
        ];
        for (ty, given, stored) in ok {
            assert_eq!(
                fit(&column(ty.clone(), false), &given),
                Ok(stored),
                "{ty:?}"
            );
        }
        let bad: Vec<(ColumnType, Value)> = vec![
            (int4.clone(), json!(1_i64 << 40)),
            (int4.clone(), json!(1.5)),
            (int4, json!(1e300)),
            (ColumnType::Number, json!("1")),
            (ColumnType::Text, json!(1)),
            (ColumnType::Text, json!("a\u{0}b")),
            (ColumnType::Uuid, json!("not-a-uuid")),
            (ColumnType::Timestamp, json!("yesterday")),
            (ColumnType::Timestamp, json!("20250-01-01T00:00:00Z")),
            (ColumnType::Date, json!("2026-13-01")),
            (ColumnType::Json, json!({"k": "\u{0}"})),
            (
                ColumnType::Enum {
                    labels: vec!["WAITING".into()],
                },
                json!("waiting"),
            ),
            (
                ColumnType::Array {
                    element: Box::new(ColumnType::Uuid),
                },
                json!(["x"]),
            ),
        ];
        for (ty, given) in bad {
            assert!(
                fit(&column(ty.clone(), true), &given).is_err(),
                "{ty:?} {given}"
            );
        }
    }

    #[test]
    fn null_follows_nullability_and_lengths_are_characters() {
        assert_eq!(
            fit(&column(ColumnType::Text, true), &Value::Null),
            Ok(Value::Null)
        );
        assert!(fit(&column(ColumnType::Text, false), &Value::Null).is_err());
        let mut short = column(ColumnType::Text, false);
        short.max_chars = Some(2);
        assert!(fit(&short, &json!("äö")).is_ok());
        assert!(fit(&short, &json!("äöü")).is_err());
    }
}
