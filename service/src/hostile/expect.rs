//! The answer a request must get, short of storing it: the same functions the facades and
//! the IngestActor call, in their order, with Redis left out.

use ops_db_actors::buffer::IngestError;
use ops_db_actors::domain::{Limits, OperationKind};
use ops_db_actors::ingest::{self, IngestArgs};
use ops_db_actors::overlay::Keys;
use ops_db_actors::slot::Slot;
use serde_json::Value;

use std::sync::Arc;

use ops_db_actors::registry;

use crate::ops::ApiError;
use crate::submit::Received;
use crate::tcp;

/// `Ok` if the write would go on to the buffer (and be stored), else its error: what
/// `submit` checks (the `Idempotency-Key`, then the body by the operation's row), then
/// the IngestActor (validation, building against `registry`, serialising).
pub fn expected(
    kind: OperationKind,
    id: Option<&str>,
    body: &[u8],
    idempotency_key: Option<&[u8]>,
    limits: &Limits,
    registry: &registry::Handle,
) -> Result<(), ApiError> {
    let received = Received {
        kind,
        id,
        body,
        idempotency_key,
        client: "hostile",
    };
    let write = received.parse()?;
    write
        .operation
        .validate(limits)
        .map_err(|v| ApiError::from(IngestError::Invalid(v)))?;
    let args = IngestArgs {
        site: "hostile".into(),
        keys: Keys::new("hostile"),
        limits: *limits,
        buffer: Slot::new(),
        presets: Arc::new(crate::config::default_presets()),
        registry: registry.clone(),
        references: None,
    };
    ingest::prepare(&args, &write)?;
    Ok(())
}

/// What one TCP line gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A blank line: no answer.
    Silent,
    /// A write that would be stored, or an `auth` line.
    Accepted,
    /// This error line (and, for a line that is not UTF-8, the connection closed).
    Refused(Value),
}

/// The answer to `line` (one line, without its `\n`) on a connection that has presented
/// `token`, a valid write token, and whose lines may be as long as any request.
pub fn expected_line(line: &[u8], token: &str, limits: &Limits) -> Verdict {
    // What the connection's codec does before a line is handled.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Verdict::Refused(tcp::error_reply(None, &tcp::not_utf8()));
    };
    if line.trim().is_empty() {
        return Verdict::Silent;
    }
    let envelope = match tcp::read_line(line) {
        Ok(envelope) => envelope,
        Err(reply) => return Verdict::Refused(reply),
    };
    let refused =
        |err: &ApiError| Verdict::Refused(tcp::error_reply(envelope.request_id.clone(), err));
    if envelope.token.as_deref().is_some_and(|t| t != token) {
        return refused(&ApiError::unauthorized());
    }
    let spec = match tcp::operation(&envelope.op) {
        Ok(Some(spec)) => spec,
        Ok(None) => return Verdict::Accepted,
        Err(err) => return refused(&err),
    };
    let key = envelope.idempotency_key();
    match expected(
        spec.kind,
        envelope.id.as_deref(),
        envelope.body(),
        key.bytes(),
        limits,
        &registry::Handle::default(),
    ) {
        Ok(()) => Verdict::Accepted,
        Err(err) => refused(&err),
    }
}

/// Checks an error answer's documented shape: `{"error": {"code", "message", "field"?,
/// "stored"?}}` with a non-empty code and message, a string field, `stored` false or
/// `"unknown"`, nothing else in `error`, and at the
/// top level only `error` and the names in `also` (the TCP reply's `request_id`,
/// `status`, `retry_after`).
pub fn error_shape(body: &Value, also: &[&str]) -> Result<(), String> {
    let top = body.as_object().ok_or("not an object")?;
    if let Some(key) = top
        .keys()
        .find(|k| *k != "error" && !also.contains(&k.as_str()))
    {
        return Err(format!("unexpected member {key:?}"));
    }
    let error = top
        .get("error")
        .and_then(Value::as_object)
        .ok_or("no error object")?;
    for name in ["code", "message"] {
        if error
            .get(name)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("error.{name} is not a non-empty string"));
        }
    }
    if error.get("field").is_some_and(|f| !f.is_string()) {
        return Err("error.field is not a string".into());
    }
    if error
        .get("stored")
        .is_some_and(|s| *s != Value::Bool(false) && s.as_str() != Some("unknown"))
    {
        return Err("error.stored is neither false nor \"unknown\"".into());
    }
    if let Some(key) = error
        .keys()
        .find(|k| !matches!(k.as_str(), "code" | "message" | "field" | "stored"))
    {
        return Err(format!("unexpected member error.{key}"));
    }
    Ok(())
}
