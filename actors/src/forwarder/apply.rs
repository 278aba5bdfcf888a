//! Applying one batch on the primary: one simple-protocol message carrying `BEGIN`, the
//! batch, `COMMIT` and the LSN query, so one round trip per batch.

use std::time::Duration;

use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Either, Row};

use super::isolate::Failure;
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

/// The one SQL message of a batch, built while its entries are read: each transaction goes
/// straight into the batch's string literal, quoted on the way, so the forwarder holds one
/// copy of a batch (not a JSON array, then its quoted form, then the message around it).
#[derive(Debug)]
pub struct Message {
    sql: String,
    count: usize,
    /// Bytes of transaction JSON in the batch: what `forwarder.batch_max_bytes` bounds.
    json_bytes: usize,
}

impl Message {
    /// An empty batch for the batch function of the service's schema `schema` (a
    /// validated identifier: `schema.name`).
    pub fn new(schema: &str) -> Self {
        Self {
            sql: format!(
                "BEGIN; SELECT idx, outcome, sqlstate, message FROM \"{schema}\".apply_batch('["
            ),
            count: 0,
            json_bytes: 0,
        }
    }

    /// Appends one transaction (a JSON object) with its stream id spliced in as its first
    /// member: `{"stream_id":"…",` + the rest of the object. With `reject`, an
    /// `"opsdb_reject":{"sqlstate":…,"message":…}` member follows: the primary answers
    /// `dead` with that error instead of applying it (see `isolate`).
    pub fn push(&mut self, stream_id: &str, tx: &str, reject: Option<&Failure>) {
        debug_assert!(tx.starts_with('{'));
        if self.count > 0 {
            self.sql.push(',');
        }
        // Stream ids are `<ms>-<seq>`: nothing in them needs quoting.
        self.sql.push_str("{\"stream_id\":\"");
        self.sql.push_str(stream_id);
        self.sql.push_str("\",");
        if let Some(failure) = reject {
            let (sqlstate, message) = (
                serde_json::Value::from(failure.sqlstate.as_str()),
                serde_json::Value::from(failure.message.as_str()),
            );
            self.push_quoted(&format!(
                "\"opsdb_reject\":{{\"sqlstate\":{sqlstate},\"message\":{message}}},"
            ));
        }
        self.push_quoted(&tx[1..]);
        self.count += 1;
        self.json_bytes += tx.len();
    }

    /// Appends `text` inside the string literal: single quotes doubled.
    fn push_quoted(&mut self, text: &str) {
        for (i, part) in text.split('\'').enumerate() {
            if i > 0 {
                self.sql.push_str("''");
            }
            self.sql.push_str(part);
        }
    }

    pub fn json_bytes(&self) -> usize {
        self.json_bytes
    }

    /// The whole message: `BEGIN`, the batch, `COMMIT` and the LSN query.
    pub fn finish(mut self) -> String {
        let permanent: Vec<String> = PERMANENT_SQLSTATES.iter().map(|s| literal(s)).collect();
        self.sql.push_str("]'::jsonb, ARRAY[");
        self.sql.push_str(&permanent.join(","));
        self.sql
            .push_str("]::text[]); COMMIT; SELECT pg_current_wal_lsn()::text");
        self.sql
    }
}

/// Sends a batch's [`Message`] (finished) and reads one outcome per transaction and the
/// LSN after the commit.
pub async fn apply(
    conn: &mut PgConnection,
    sql: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Applied, ForwardError> {
    let run = async {
        let mut outcomes = Vec::with_capacity(expected);
        let mut lsn = None;
        let mut results = sqlx::raw_sql(sql).fetch_many(&mut *conn);
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

    /// What the primary receives: the transactions as one JSON array literal, each with its
    /// stream id first, quotes doubled, wrapped in BEGIN/COMMIT and the LSN query.
    #[test]
    fn a_message_carries_the_batch_as_one_quoted_json_array() {
        let mut m = Message::new("opsdb_api");
        m.push("1-0", r#"{"id":"a","note":"it's"}"#, None);
        let reject = Failure {
            sqlstate: "P0001".into(),
            message: "won't".into(),
        };
        m.push("2-5", r#"{"id":"b"}"#, Some(&reject));
        assert_eq!(m.json_bytes(), 34);
        let sql = m.finish();
        let inner = r#"[{"stream_id":"1-0","id":"a","note":"it''s"},{"stream_id":"2-5","opsdb_reject":{"sqlstate":"P0001","message":"won''t"},"id":"b"}]"#;
        assert_eq!(
            sql,
            format!(
                "BEGIN; SELECT idx, outcome, sqlstate, message FROM \"opsdb_api\".apply_batch('{inner}'::jsonb, \
                 ARRAY['22','23','P0002']::text[]); COMMIT; SELECT pg_current_wal_lsn()::text"
            )
        );
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"back\slash"), r"'back\slash'");
    }
}
