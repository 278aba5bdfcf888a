//! The media type of request bodies: every route with a body reads JSON, and a body
//! declared as anything else is refused with 415 before it is read.
//!
//! A request without `Content-Type` is read as JSON: scripts written for the original
//! service send bodies without one, and they keep working.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};

use crate::ops::ApiError;

/// `Ok` for a body declared JSON (`application/json`, `application/<x>+json`, any
/// parameters) or not declared at all; 415 `unsupported_media_type` otherwise.
pub fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some(e) if is_json(e) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        )
        .with_field("Content-Type")),
    }
}

fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|sub| sub.strip_suffix("+json"))
            .is_some_and(|name| {
                !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '/')
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_bytes(value).expect("a value"),
        );
        headers
    }

    #[test]
    fn json_or_nothing_is_read_and_anything_else_is_415() {
        assert!(
            json_body(&HeaderMap::new()).is_ok(),
            "old scripts send none"
        );
        for ok in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/merge-patch+json",
        ] {
            assert!(json_body(&with(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/jsonx",
            b"application/+json",
            b"",
            b"\xff",
        ] {
            let err = json_body(&with(bad)).expect_err("refused");
            assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
            assert_eq!(err.code, "unsupported_media_type");
        }
    }
}
