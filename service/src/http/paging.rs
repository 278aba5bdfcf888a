//! The `limit` and `cursor` query parameters of list reads, and how an answer names its
//! next page. The page itself is `ops_db_actors::overlay::PageRequest`.
//!
//! A cursor is opaque to callers: it is the text the previous answer gave
//! (`x-next-cursor` for a top-level list, `<list>_next_cursor` for a nested one).

use axum::http::StatusCode;
use ops_db_actors::overlay::{PageRequest, MAX_LIMIT};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::ops::ApiError;

/// The header naming the next page of a top-level list; absent on the last page, so a
/// caller that ignores it reads the first page exactly as before.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", message).with_field(field)
}

/// The page asked for: `limit` (default 100, at most `MAX_LIMIT`) and the cursor given in
/// the parameter named `cursor_field`.
pub fn page(
    limit: Option<&str>,
    cursor: Option<&str>,
    cursor_field: &str,
) -> Result<PageRequest, ApiError> {
    let after = cursor
        .map(|text| {
            Uuid::parse_str(text).map_err(|_| {
                invalid(
                    cursor_field,
                    format!("{cursor_field} is not a cursor this service gave"),
                )
            })
        })
        .transpose()?;
    let Some(limit) = limit else {
        return Ok(PageRequest::default().after_id(after));
    };
    let too_far = || {
        invalid(
            "limit",
            format!("limit must be an integer from 1 to {MAX_LIMIT}"),
        )
    };
    let limit: usize = limit.parse().map_err(|_| too_far())?;
    PageRequest::new(limit, after).map_err(|_| too_far())
}

/// The text of a next cursor, `null` on the last page.
pub fn cursor_value(next: Option<Uuid>) -> Value {
    next.map_or(Value::Null, |id| json!(cursor_text(id)))
}

pub fn cursor_text(id: Uuid) -> String {
    id.simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_limits_and_cursors_name_their_field() {
        for limit in ["0", "1001", "-1", "ten", ""] {
            let err = page(Some(limit), None, "cursor").expect_err(limit);
            assert_eq!(err.field.as_deref(), Some("limit"), "{limit}");
        }
        let err = page(None, Some("zzz"), "files_cursor").expect_err("bad cursor");
        assert_eq!(err.field.as_deref(), Some("files_cursor"));
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn a_cursor_given_reads_back_as_the_same_page_start() {
        let id = Uuid::now_v7();
        let page = page(Some("5"), Some(&cursor_text(id)), "cursor").expect("page");
        assert_eq!((page.limit(), page.after()), (5, Some(id)));
    }
}
