//! What every route and both facades share: error answers ([`ApiError`], and the mapping
//! of every ingest outcome to a status code), request decoding with field paths, ids and
//! idempotency keys. Submitting a write is `submit.rs`; the table of operations,
//! `operations.rs` (which uses this module, never the other way round).

use axum::http::StatusCode;
use ops_db_actors::buffer::IngestError;
use ops_db_actors::domain::IdempotencyKey;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

mod stored;
pub use stored::Stored;

/// Seconds a client should wait before retrying a write refused for lack of storage.
pub const RETRY_AFTER_UNAVAILABLE: u64 = 1;
pub const RETRY_AFTER_FULL: u64 = 30;

// What [`ApiError::body`] writes, HTTP or TCP; its doc comment is the OpenAPI description.
/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable and machine-readable, e.g. `missing_field`, `buffer_full`.
    pub code: &'a str,
    /// For people; never Redis or database text.
    pub message: &'a str,
    /// The request's part at fault: a field path (`[0].relative_path`), a query
    /// parameter, `id`, `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
    /// On every 503 answer to a write: `false` when nothing was stored (a retry without
    /// an idempotency key is safe), `"unknown"` when the write may have been stored
    /// (retry with the same idempotency key: the retry gets the first answer if it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = stored::schema)]
    pub stored: Option<Stored>,
}

/// An answer that is not an acknowledgement. Messages are for callers: they never carry
/// Redis or database text.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
    /// Set on every 503 answer to a write (see [`ErrorDetail::stored`]).
    pub stored: Option<Stored>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            stored: None,
        }
    }

    /// Says whether the refused write may have been stored.
    pub fn with_stored(mut self, stored: Stored) -> Self {
        self.stored = Some(stored);
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn body(&self) -> Value {
        json!(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                stored: self.stored,
            },
        })
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 503 with `Retry-After`: the local Redis did not answer. `what` is logged for the
    /// operator, never shown to the caller.
    pub fn redis_unavailable(what: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %what, "redis did not answer");
        Self {
            retry_after: Some(RETRY_AFTER_UNAVAILABLE),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis_unavailable",
                "the local buffer did not answer; retry later",
            )
        }
    }

    /// 503 with `Retry-After`: the read source (the local replica) did not answer. `what`
    /// is logged for the operator, never shown to the caller.
    pub fn replica_unavailable(what: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %what, "replica did not answer");
        Self {
            retry_after: Some(RETRY_AFTER_UNAVAILABLE),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "replica_unavailable",
                "the local replica did not answer; retry later",
            )
        }
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token lacks the scope for this endpoint",
        )
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Invalid(v) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, v.code, v.message).with_field(v.field)
            }
            IngestError::IdempotencyConflict => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was first used with a different request",
            )
            .with_field("Idempotency-Key"),
            IngestError::BufferFull(n) => Self {
                retry_after: Some(RETRY_AFTER_FULL),
                stored: Some(Stored::No),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "buffer_full",
                    format!("the local buffer holds {n} unforwarded transactions, its limit; nothing was stored, retry later"),
                )
            },
            IngestError::MemoryFull { .. } => Self {
                retry_after: Some(RETRY_AFTER_FULL),
                stored: Some(Stored::No),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "buffer_full",
                    "the local buffer has used its share of Redis' memory; nothing was stored, retry later",
                )
            },
            IngestError::DiskFull(_) => Self {
                retry_after: Some(RETRY_AFTER_FULL),
                stored: Some(Stored::No),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "buffer_full",
                    "the disk of the local buffer is nearly full; nothing was stored, retry later",
                )
            },
            IngestError::RegistryUnknown => Self {
                retry_after: Some(RETRY_AFTER_UNAVAILABLE),
                stored: Some(Stored::No),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registry_unavailable",
                    "the service has not read ops-db's schema yet (the read source has not answered since it started); nothing was stored, retry later",
                )
            },
            IngestError::Unavailable(reason) => {
                tracing::warn!(%reason, "write not acknowledged, nothing stored");
                Self {
                    retry_after: Some(RETRY_AFTER_UNAVAILABLE),
                    stored: Some(Stored::No),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "buffer_unavailable",
                        "the local buffer could not take the write; nothing was stored, retry later",
                    )
                }
            }
            IngestError::MaybeStored(reason) => {
                tracing::warn!(%reason, "write not acknowledged, may have been stored");
                Self {
                    retry_after: Some(RETRY_AFTER_UNAVAILABLE),
                    stored: Some(Stored::Unknown),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "buffer_unavailable",
                        "the write was not acknowledged but may have been stored; retry with the same Idempotency-Key to learn which",
                    )
                }
            }
            // Logged where it happened; the caller learns only that it is not its fault.
            IngestError::PresetMisfit(op) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "preset_misfit",
                format!(
                    "this endpoint's preset ({op}) names a table or column ops-db does not have; \
                     an operator must fix schema.presets; nothing was stored"
                ),
            ),
            IngestError::Internal(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the service could not prepare this write; nothing was stored",
            ),
        }
    }
}

/// Decodes a JSON body into `T`, naming the offending field on failure. An object that
/// holds a key twice anywhere in the body is refused first (`UniqueKeys`).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, UniqueKeys>(&mut de).map_err(|err| {
        let path = err.path().to_string();
        classify(&path, &err.into_inner())
    })?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        classify(&path, &err.into_inner())
    })?;
    de.end().map_err(|err| classify("", &err))?;
    Ok(value)
}

/// Any JSON value, read only to find an object holding a key twice: serde keeps the last
/// value of a free-form object's key (a step's `values`, a `meta`) and would drop the
/// first unseen; a struct's field given twice it refuses itself, with the same message.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(self)
    }
}

fn classify(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = strip_position(&err.to_string());
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {message}"),
        ),
        Category::Data => {
            let named = backticked(&message);
            let (code, field) = if message.starts_with("missing field") {
                ("missing_field", join_path(path, named))
            } else if message.starts_with("unknown field") {
                // The path already ends at the unknown field.
                ("unknown_field", path.to_owned())
            } else if message.starts_with("duplicate field") {
                // The path ends at the object holding it twice.
                ("invalid_field", join_path(path, named))
            } else {
                ("invalid_field", path.to_owned())
            };
            let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
            if field == "." || field.is_empty() {
                e
            } else {
                e.with_field(field)
            }
        }
    }
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn join_path(path: &str, name: Option<&str>) -> String {
    match (path, name) {
        (".", Some(n)) | ("", Some(n)) => n.to_owned(),
        (p, Some(n)) => format!("{p}.{n}"),
        (p, None) => p.to_owned(),
    }
}

fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

pub fn invalid_id(raw: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_id",
        format!("{raw:?} is not a UUID"),
    )
    .with_field("id")
}

pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| invalid_id(raw))
}

/// Parses an `Idempotency-Key` given as bytes (an HTTP header may hold any).
pub fn parse_idempotency_key(raw: &[u8]) -> Result<IdempotencyKey, ApiError> {
    // Not UTF-8 is answered like any other key that is not visible ASCII.
    IdempotencyKey::parse(std::str::from_utf8(raw).unwrap_or_default())
        .map_err(|v| ApiError::new(StatusCode::BAD_REQUEST, v.code, v.message).with_field(v.field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // read by the decoder only
    struct Inner {
        a: u8,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        b: u8,
    }

    /// A key given twice is named, at the top and nested.
    #[test]
    fn a_duplicate_key_names_its_field() {
        let top = decode::<Outer>(br#"{"inner": {"a": 1}, "b": 1, "b": 2}"#).unwrap_err();
        assert_eq!(
            (top.status, top.code, top.field.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some("b"))
        );
        let nested = decode::<Outer>(br#"{"inner": {"a": 1, "a": 2}, "b": 1}"#).unwrap_err();
        assert_eq!(nested.field.as_deref(), Some("inner.a"));
        // In a free-form object, which serde alone would take with its last value.
        let free = decode::<Value>(br#"{"steps": [{"values": {"x": 1, "x": 2}}]}"#).unwrap_err();
        assert_eq!(
            (free.code, free.field.as_deref()),
            ("invalid_field", Some("steps[0].values.x"))
        );
        assert!(decode::<Value>(br#"{"a": {"x": 1}, "b": {"x": 2}, "c": [1, 1]}"#).is_ok());
        let bad = decode::<Value>(b"{\"a\": ").unwrap_err();
        assert_eq!(bad.code, "malformed_json");
    }

    /// Every ingest outcome that answers 503 says whether the write may have been stored;
    /// no other says anything.
    #[test]
    fn every_503_of_a_write_says_whether_it_was_stored() {
        use ops_db_actors::domain::ValidationError;
        let cases = [
            (IngestError::BufferFull(3), Some(Stored::No)),
            (
                IngestError::MemoryFull {
                    used: None,
                    limit: None,
                },
                Some(Stored::No),
            ),
            (IngestError::DiskFull("low".into()), Some(Stored::No)),
            (IngestError::RegistryUnknown, Some(Stored::No)),
            (IngestError::Unavailable("refused".into()), Some(Stored::No)),
            (
                IngestError::MaybeStored("timed out".into()),
                Some(Stored::Unknown),
            ),
            (
                IngestError::Invalid(ValidationError::new("invalid_field", "f", "bad")),
                None,
            ),
            (IngestError::IdempotencyConflict, None),
            (IngestError::PresetMisfit("op"), None),
            (IngestError::Internal("bug".into()), None),
        ];
        for (err, stored) in cases {
            let what = format!("{err:?}");
            let answer = ApiError::from(err);
            assert_eq!(answer.stored, stored, "{what}");
            assert_eq!(
                answer.status == StatusCode::SERVICE_UNAVAILABLE,
                stored.is_some(),
                "{what}"
            );
            let body = answer.body();
            let field = &body["error"]["stored"];
            match stored {
                Some(Stored::No) => assert_eq!(field, &json!(false), "{what}"),
                Some(Stored::Unknown) => assert_eq!(field, &json!("unknown"), "{what}"),
                None => assert!(field.is_null(), "{what}"),
            }
        }
    }

    #[test]
    fn ingest_errors_map_to_their_status_codes() {
        let full = ApiError::from(IngestError::BufferFull(7));
        assert_eq!((full.status.as_u16(), full.retry_after), (503, Some(30)));
        let memory = ApiError::from(IngestError::MemoryFull {
            used: Some(60),
            limit: Some(50),
        });
        assert_eq!(
            (memory.status.as_u16(), memory.code, memory.retry_after),
            (503, "buffer_full", Some(30))
        );
        let down = ApiError::from(IngestError::Unavailable("redis: refused".into()));
        assert_eq!((down.status.as_u16(), down.retry_after), (503, Some(1)));
        assert!(
            !down.message.contains("refused"),
            "no Redis text for callers"
        );
        let bug = ApiError::from(IngestError::Internal("serialising: boom".into()));
        assert_eq!((bug.status.as_u16(), bug.code), (500, "internal_error"));
        assert!(!bug.message.contains("boom"));
    }

    #[test]
    fn idempotency_keys_that_are_not_text_are_refused() {
        assert!(parse_idempotency_key(b"job-7").is_ok());
        let e = parse_idempotency_key(&[0xff, 0xfe]).expect_err("not UTF-8");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
        );
    }
}
