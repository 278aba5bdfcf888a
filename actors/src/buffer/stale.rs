//! Which failed writes may be sent once more, on a fresh connection.
//!
//! A write is retried only if it cannot have been executed: Redis refused it with
//! `NOSCRIPT` (the server restarted and its script cache is empty), or its connection was
//! found closed or reset, and a fresh connection then shows that its lifecycle key, which
//! the buffer script writes in the same atomic step as the stream entry, does not exist.
//! A timeout after sending is never retried: the write may be executing; it stays a 503
//! and the client's retry (with the same `Idempotency-Key`) is the safe path.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::{IngestError, WriteRequest};

/// Why a write failed without an answer from the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stale {
    /// The script was not in the server's cache: nothing ran.
    NoScript,
    /// The connection was closed or reset: nothing ran unless the lifecycle key says so.
    Dropped,
}

/// The retry class of a failure, or `None` when the write may have run (or must not run
/// again for another reason).
pub(super) fn classify(err: &RedisError) -> Option<Stale> {
    if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) {
        return Some(Stale::NoScript);
    }
    if err.is_timeout() {
        return None;
    }
    err.is_connection_dropped().then_some(Stale::Dropped)
}

/// Error replies Redis gives before a command (or a script's first write, which comes
/// after every check in `buffer.lua`) changes anything: the write was not stored.
pub(super) fn refused_unrun(err: &RedisError) -> bool {
    const REFUSALS: [&str; 8] = [
        "MISCONF",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "NOAUTH",
        "NOPERM",
        "WRONGPASS",
    ];
    err.code().is_some_and(|code| REFUSALS.contains(&code))
}

/// What a write that was not stored is answered: Redis refusing writes while its
/// persistence fails (`MISCONF`: its last AOF write or snapshot failed, most often for a
/// full disk) is the disk's refusal (`DiskFull`: 503 `buffer_full` with `Retry-After`, as
/// when the disk admission refuses), not a passing unavailability.
pub(super) fn refusal(err: &RedisError) -> IngestError {
    if err.code() == Some("MISCONF") {
        return IngestError::DiskFull(format!("redis refuses writes: {err}"));
    }
    IngestError::Unavailable(err.to_string())
}

/// A write that failed in a way [`classify`] allows to retry.
pub(super) struct StaleWrite {
    pub request: WriteRequest,
    pub why: Stale,
    pub error: RedisError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn io_error(kind: io::ErrorKind) -> RedisError {
        RedisError::from(io::Error::from(kind))
    }

    #[test]
    fn only_failures_that_ran_nothing_are_retried() {
        let noscript = RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoScript),
            "NOSCRIPT No matching script",
        ));
        assert_eq!(classify(&noscript), Some(Stale::NoScript));
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(classify(&io_error(kind)), Some(Stale::Dropped), "{kind:?}");
        }
        // A timeout after sending: the write may be running.
        assert_eq!(classify(&io_error(io::ErrorKind::TimedOut)), None);
        // The server answered with an error: the script ran (or refused) once already.
        let oom = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "OOM"));
        assert_eq!(classify(&oom), None);
    }

    /// The error Redis answers with `reply` (a RESP error line).
    fn server_error(reply: &str) -> RedisError {
        match redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(err)) => err.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn refusals_before_the_script_ran_are_told_from_script_failures() {
        for code in [
            "MISCONF",
            "READONLY",
            "LOADING",
            "BUSY",
            "NOAUTH",
            "MASTERDOWN",
        ] {
            let refused = server_error(&format!("{code} no writes now"));
            assert!(refused_unrun(&refused), "{code}");
        }
        let misconf =
            server_error("MISCONF Errors writing to the AOF file: No space left on device");
        assert!(
            matches!(refusal(&misconf), IngestError::DiskFull(why) if why.contains("AOF")),
            "a failing AOF is the disk's refusal"
        );
        let loading = server_error("LOADING Redis is loading the dataset in memory");
        assert!(matches!(refusal(&loading), IngestError::Unavailable(_)));
        let script = server_error("ERR user_script:12: attempt to index a nil value");
        assert!(!refused_unrun(&script));
        assert!(!refused_unrun(&io_error(io::ErrorKind::TimedOut)));
    }
}
