//! What stops the replica tracker. Every variant fails the actor on purpose: the
//! supervisor restarts it with backoff, and lifecycles stay `forwarded` meanwhile.
//!
//! The messages are what operators read as `last_failure.reason` in `/health/actors`, so
//! each names the side it is about (`replica`, `redis`) and carries the underlying text.

use std::time::Duration;

use crate::lsn::ParseLsnError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica: no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// Connecting or the query failed (including a bad URL).
    #[error("replica: {0}")]
    Database(#[from] sqlx::Error),
    #[error("replica: no answer within {0:?}")]
    QueryTimeout(Duration),
    /// A standby that has replayed no WAL yet (`pg_last_wal_replay_lsn()` is NULL): nothing
    /// can be marked replicated until it has.
    #[error("replica: a standby that has replayed nothing yet (pg_last_wal_replay_lsn() is NULL)")]
    NothingReplayed,
    #[error("replica: {0}")]
    BadLsn(#[from] ParseLsnError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// `what` did not finish within `redis.timeout`.
    #[error("redis: {0} timed out")]
    RedisTimeout(&'static str),
    /// The LSN-scored set holds something that is not a transaction id.
    #[error("redis: {id:?} in the forwarded set is not a transaction id: {source}")]
    BadTransactionId { id: String, source: uuid::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators read these in `/health/actors`: they say which side failed, and why.
    #[test]
    fn messages_name_the_side_and_the_cause() {
        let bad_lsn = "0/zz".parse::<crate::lsn::Lsn>().unwrap_err();
        let cases = [
            (
                ReplicaError::ConnectTimeout(Duration::from_secs(2)),
                "replica: no connection within 2s",
            ),
            (
                ReplicaError::BadLsn(bad_lsn),
                "replica: not an LSN: \"0/zz\"",
            ),
            (
                ReplicaError::RedisTimeout("marking replicated transactions"),
                "redis: marking replicated transactions timed out",
            ),
        ];
        for (err, message) in cases {
            assert_eq!(err.to_string(), message);
        }
        assert!(ReplicaError::NothingReplayed
            .to_string()
            .starts_with("replica: a standby that has replayed nothing"));
    }
}
