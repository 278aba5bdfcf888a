//! What stops the forwarder. Every variant fails the actor on purpose (let it crash): the
//! supervisor restarts it with backoff, and its unsettled batch is read again first.
//!
//! The messages are what operators read as `last_failure.reason` in `/health/actors`, so
//! each names the side it is about (`primary`, `redis`) and carries the underlying text.

use std::time::Duration;

#[cfg(feature = "fault-injection")]
use super::CrashPoint;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("primary: no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// Connecting, a query, or the batch's statement failed (including a bad URL).
    #[error("primary: {0}")]
    Database(#[from] sqlx::Error),
    /// The batch is sent as a string literal, whose quoting relies on this setting.
    #[error("primary: standard_conforming_strings must be on")]
    NonStandardStrings,
    /// The batch's round trip took longer than `forwarder.statement_timeout` plus
    /// `forwarder.connect_timeout` (the primary's own statement timeout comes first when
    /// the link works).
    #[error("primary did not answer within {0:?}")]
    StatementTimeout(Duration),
    /// The primary answered something the batch function never returns.
    #[error("primary answered unexpectedly: {0}")]
    Protocol(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// `what` (a step of the batch) did not finish within `redis.timeout`.
    #[error("redis: {0} timed out")]
    RedisTimeout(&'static str),
    /// The lease was not renewed recently enough to settle a batch safely.
    #[error("redis: forwarder lease not renewed within {0:?}; another instance may take over")]
    LeaseLost(Duration),
    #[cfg(feature = "fault-injection")]
    #[error("injected crash at {0:?}")]
    InjectedCrash(CrashPoint),
}

impl ForwardError {
    /// Whether this says the link to the primary is down (no connection, a broken one),
    /// rather than something the primary or Redis answered. A batch without an answer in
    /// time is not counted here: it may be a slow batch (see `isolate::Stall`).
    pub fn is_link(&self) -> bool {
        match self {
            Self::ConnectTimeout(_) => true,
            // Class 08, connection exception: what the pinned TLS tunnel answers when it
            // cannot reach the server or trust it (`pg/pinned.rs`).
            Self::Database(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|code| code.starts_with("08"))
            }
            Self::Database(e) => !matches!(
                e,
                sqlx::Error::Database(_)
                    | sqlx::Error::Configuration(_)
                    | sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators read these in `/health/actors`: they say which side failed, and why.
    #[test]
    fn messages_name_the_side_and_the_cause() {
        let cases = [
            (
                ForwardError::ConnectTimeout(Duration::from_secs(2)),
                "primary: no connection within 2s",
            ),
            (
                ForwardError::RedisTimeout("settling a committed batch"),
                "redis: settling a committed batch timed out",
            ),
            (
                ForwardError::Protocol("no LSN after commit".into()),
                "primary answered unexpectedly: no LSN after commit",
            ),
        ];
        for (err, message) in cases {
            assert_eq!(err.to_string(), message);
        }
        #[cfg(feature = "fault-injection")]
        assert_eq!(
            ForwardError::InjectedCrash(CrashPoint::AfterCommit).to_string(),
            "injected crash at AfterCommit"
        );
    }
}
