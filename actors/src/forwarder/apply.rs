//! Applying one batch on the primary: one simple-protocol message carrying `BEGIN`, the
//! batch, `COMMIT` and the LSN query, so one round trip per batch.

use std::time::Duration;

use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Either, Row};

use super::ForwardError;
use crate::lsn::Lsn;

/// The one place that decides which database errors mean "this transaction can never
/// apply" (dead-lettered) rather than "try again later": data exceptions (22: bad values),
/// integrity violations (23: foreign key, unique, check, not null) and an update of a row
/// that does not exist (P0002). Everything else (connection loss, timeouts, serialization
/// failures, a missing table) is transient and retried, never dead-lettered.
pub const PERMANENT_SQLSTATES: [&str; 3] = ["22", "23", "P0002"];

pub fn is_permanent(sqlstate: &str) -> bool {
    PERMANENT_SQLSTATES
        .iter()
        .any(|p| sqlstate == *p || (p.len() == 2 && sqlstate.starts_with(p)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Already in the ledger: committed by an earlier attempt whose acknowledgement was lost.
    Skipped,
    Dead {
        sqlstate: String,
        message: String,
    },
}

#[derive(Debug)]
pub struct Applied {
    /// One per transaction of the batch, in order.
    pub outcomes: Vec<Outcome>,
    /// Read after the commit: at or after the batch's commit record.
    pub lsn: Lsn,
}

/// Quotes `text` as an SQL string literal (standard_conforming_strings is on, which the
/// forwarder checks at connect).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub async fn apply(
    conn: &mut PgConnection,
    batch_json: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Applied, ForwardError> {
    let permanent: Vec<String> = PERMANENT_SQLSTATES.iter().map(|s| literal(s)).collect();
    let sql = format!(
        "BEGIN; \
         SELECT idx, outcome, sqlstate, message FROM opsdb_apply_batch({}::jsonb, ARRAY[{}]::text[]); \
         COMMIT; \
         SELECT pg_current_wal_lsn()::text",
        literal(batch_json),
        permanent.join(",")
    );
    let run = async {
        let mut outcomes = Vec::with_capacity(expected);
        let mut lsn = None;
        let mut results = sqlx::raw_sql(&sql).fetch_many(&mut *conn);
        while let Some(item) = results.try_next().await? {
            let Either::Right(row) = item else { continue };
            if row.len() == 1 {
                let text: String = row.try_get(0)?;
                lsn = Some(
                    text.parse::<Lsn>()
                        .map_err(|e| ForwardError::Protocol(e.to_string()))?,
                );
                continue;
            }
            let outcome: String = row.try_get(1)?;
            outcomes.push(match outcome.as_str() {
                "applied" => Outcome::Applied,
                "skipped" => Outcome::Skipped,
                "dead" => Outcome::Dead {
                    sqlstate: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                    message: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                },
                other => return Err(ForwardError::Protocol(format!("outcome {other:?}"))),
            });
        }
        let lsn = lsn.ok_or_else(|| ForwardError::Protocol("no LSN after commit".into()))?;
        if outcomes.len() != expected {
            return Err(ForwardError::Protocol(format!(
                "{} outcomes for {expected} transactions",
                outcomes.len()
            )));
        }
        Ok(Applied { outcomes, lsn })
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| ForwardError::StatementTimeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_integrity_and_missing_rows_are_permanent() {
        for state in ["22P02", "22003", "23503", "23505", "23514", "P0002"] {
            assert!(is_permanent(state), "{state}");
        }
        // connection, serialization failure, deadlock, admin shutdown, undefined table, timeout
        for state in [
            "08006", "40001", "40P01", "57P01", "42P01", "57014", "P0001",
        ] {
            assert!(!is_permanent(state), "{state}");
        }
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"back\slash"), r"'back\slash'");
    }
}
