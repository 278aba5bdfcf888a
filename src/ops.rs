//! What both facades share: parsing a request into an [`Operation`], calling the tree, and
//! turning every outcome into a status code and a JSON body.

use std::time::Duration;

use axum::http::StatusCode;
use ops_db_actors::buffer::{Ack, IngestError};
use ops_db_actors::domain::{IdempotencyKey, Operation};
use ops_db_actors::tree::Tree;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use uuid::Uuid;

/// Seconds a client should wait before retrying a write refused for lack of storage.
pub const RETRY_AFTER_UNAVAILABLE: u64 = 1;
pub const RETRY_AFTER_FULL: u64 = 30;

/// An answer that is not an acknowledgement. Messages are for callers: they never carry
/// Redis or database text.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
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
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "buffer_full",
                    format!("the local buffer holds {n} unforwarded transactions, its limit; nothing was stored, retry later"),
                )
            },
            IngestError::Unavailable(reason) => {
                tracing::warn!(%reason, "write not acknowledged");
                Self {
                    retry_after: Some(RETRY_AFTER_UNAVAILABLE),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "buffer_unavailable",
                        "the write could not be made durable and was not acknowledged; retry (with the same Idempotency-Key to be safe)",
                    )
                }
            }
        }
    }
}

/// Decodes a JSON body into `T`, naming the offending field on failure.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        classify(&path, &err.into_inner())
    })?;
    de.end().map_err(|err| classify("", &err))?;
    Ok(value)
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

/// Parses an optional `Idempotency-Key`; `Err(())` stands for a value that is not text.
pub fn parse_idempotency_key(
    raw: Option<Result<&str, ()>>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let invalid = |v: ops_db_actors::domain::ValidationError| {
        ApiError::new(StatusCode::BAD_REQUEST, v.code, v.message).with_field(v.field)
    };
    match raw {
        None => Ok(None),
        Some(Ok(key)) => IdempotencyKey::parse(key).map(Some).map_err(invalid),
        // Not text: the same answer as any other key that is not visible ASCII.
        Some(Err(())) => IdempotencyKey::parse("").map(Some).map_err(invalid),
    }
}

/// The write operations, by the names both facades use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    StartExecutedObsUnit,
    FinishExecutedObsUnit,
    CreateRawDataFile,
    BulkCreateRawDataFiles,
    CreateRawDataPackage,
    FinalizeRawDataPackage,
}

impl WriteOp {
    pub const ALL: [WriteOp; 6] = [
        Self::StartExecutedObsUnit,
        Self::FinishExecutedObsUnit,
        Self::CreateRawDataFile,
        Self::BulkCreateRawDataFiles,
        Self::CreateRawDataPackage,
        Self::FinalizeRawDataPackage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::StartExecutedObsUnit => "executed_obs_units.start",
            Self::FinishExecutedObsUnit => "executed_obs_units.finish",
            Self::CreateRawDataFile => "raw_data_files.create",
            Self::BulkCreateRawDataFiles => "raw_data_files.bulk",
            Self::CreateRawDataPackage => "raw_data_package.create",
            Self::FinalizeRawDataPackage => "raw_data_package.finalize",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    pub fn needs_id(self) -> bool {
        matches!(
            self,
            Self::FinishExecutedObsUnit | Self::FinalizeRawDataPackage
        )
    }

    /// Parses the body (and the path id, for updates) into an [`Operation`].
    pub fn parse(self, id: Option<&str>, body: &[u8]) -> Result<Operation, ApiError> {
        let id = match (self.needs_id(), id) {
            (true, Some(raw)) => Some(parse_id(raw)?),
            (true, None) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "missing_field",
                    "this operation needs the record's id",
                )
                .with_field("id"))
            }
            (false, _) => None,
        };
        // An update with nothing to say (finalize) may come with an empty body.
        let body =
            if body.iter().all(u8::is_ascii_whitespace) && self == Self::FinalizeRawDataPackage {
                b"{}".as_slice()
            } else {
                body
            };
        let id = id.unwrap_or_default();
        Ok(match self {
            Self::StartExecutedObsUnit => Operation::StartExecutedObsUnit(decode(body)?),
            Self::FinishExecutedObsUnit => Operation::FinishExecutedObsUnit {
                id,
                body: decode(body)?,
            },
            Self::CreateRawDataFile => Operation::CreateRawDataFile(decode(body)?),
            Self::BulkCreateRawDataFiles => Operation::BulkCreateRawDataFiles {
                files: decode(body)?,
            },
            Self::CreateRawDataPackage => Operation::CreateRawDataPackage(decode(body)?),
            Self::FinalizeRawDataPackage => Operation::FinalizeRawDataPackage {
                id,
                body: decode(body)?,
            },
        })
    }
}

/// Parses and submits one write; the answer's status and body.
pub async fn write(
    tree: &Tree,
    timeout: Duration,
    op: WriteOp,
    id: Option<&str>,
    body: &[u8],
    idempotency_key: Option<Result<&str, ()>>,
) -> Result<(StatusCode, Ack), ApiError> {
    let idempotency = parse_idempotency_key(idempotency_key)?;
    let operation = op.parse(id, body)?;
    let ack = tree.ingest(operation, idempotency, timeout).await?;
    let status = if ack.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(op: WriteOp, body: &str) -> ApiError {
        op.parse(None, body.as_bytes()).expect_err("must fail")
    }

    #[test]
    fn decode_errors_are_classified_and_name_fields() {
        let e = err(WriteOp::StartExecutedObsUnit, "{\"obs_unit_id\": ");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        let e = err(WriteOp::StartExecutedObsUnit, "{}");
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_field", Some("obs_unit_id"))
        );
        let e = err(
            WriteOp::StartExecutedObsUnit,
            r#"{"obs_unit_id": 1, "colour": "red"}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("colour"))
        );
        let e = err(WriteOp::StartExecutedObsUnit, r#"{"obs_unit_id": "one"}"#);
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_field", Some("obs_unit_id"))
        );
        let e = err(
            WriteOp::StartExecutedObsUnit,
            r#"{"obs_unit_id": 1, "start_time": "yesterday"}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_field", Some("start_time"))
        );
        let e = err(WriteOp::BulkCreateRawDataFiles, r#"[{"name": "a"}]"#);
        assert_eq!(e.code, "missing_field");
        assert!(
            e.field.as_deref().is_some_and(|f| f.starts_with("[0]")),
            "{e:?}"
        );
        let e = err(
            WriteOp::StartExecutedObsUnit,
            r#"{"obs_unit_id": 1} trailing"#,
        );
        assert_eq!(e.code, "malformed_json");
        assert!(
            !e.message.contains(" at line "),
            "positions are stripped: {}",
            e.message
        );
    }

    #[test]
    fn updates_need_a_uuid_id() {
        let e = WriteOp::FinishExecutedObsUnit
            .parse(Some("42"), br#"{"status":"completed"}"#)
            .expect_err("bad id");
        assert_eq!((e.code, e.field.as_deref()), ("invalid_id", Some("id")));
        let ok = WriteOp::FinalizeRawDataPackage.parse(Some(&Uuid::nil().to_string()), b"");
        assert!(ok.is_ok(), "finalize accepts an empty body");
    }

    #[test]
    fn op_names_round_trip() {
        for op in WriteOp::ALL {
            assert_eq!(WriteOp::from_name(op.name()), Some(op));
        }
    }
}
