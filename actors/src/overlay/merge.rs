//! What reads answer, from what they found: a record merged from the read source's row and
//! its overlay record, with its `sync` field; a transaction's lifecycle. Pure functions.
//!
//! Timestamps are formatted one way (RFC 3339, microseconds, `Z`) whichever side a record
//! comes from, so a record reads the same before and after its overlay is released.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{OverlayRecord, TxState, UnknownState};

const TIMESTAMP_COLUMNS: [&str; 4] = ["start_time", "end_time", "created_at", "finalized_at"];

/// A latest writer's lifecycle as merged reads need it: state and commit LSN (`HMGET`).
pub(super) type WriterState = (Option<TxState>, Option<String>);

/// One record: the overlay over the read source's row, and its latest writer if the
/// overlay holds it; `None` if there is nothing to show.
pub(super) fn merge_one(
    replica: Option<Value>,
    overlay: Option<OverlayRecord>,
) -> Option<(Map<String, Value>, Option<Uuid>)> {
    let Some(overlay) = overlay else {
        return match replica {
            Some(Value::Object(row)) => Some((row, None)),
            Some(_) => Some((Map::new(), None)),
            None => None,
        };
    };
    if overlay.deleted {
        // A buffered delete: gone, whatever the read source still has.
        return None;
    }
    let mut record = match replica {
        // An update buffered for a record the replica does not have (yet): nothing to show.
        None if overlay.partial => return None,
        Some(Value::Object(row)) if overlay.partial => row,
        _ => Map::new(),
    };
    record.extend(overlay.columns);
    Some((record, overlay.writer))
}

/// The answer for a merged record: timestamps normalised, `sync` added. `writer`: the
/// latest writer and what Redis still knows of it (a writer it no longer knows counts as
/// buffered, as it did before its overlay was read).
pub(super) fn answer(
    record: Map<String, Value>,
    writer: Option<(Uuid, Option<&WriterState>)>,
) -> Value {
    let sync = match writer {
        Some((tx, known)) => {
            let (state, lsn) = known.cloned().unwrap_or_default();
            json!({ "state": state.unwrap_or(TxState::Buffered), "transaction_id": tx, "lsn": lsn })
        }
        None => json!({ "state": TxState::Replicated, "transaction_id": null, "lsn": null }),
    };
    let mut record = normalise(record);
    record.insert("sync".into(), sync);
    Value::Object(record)
}

/// Whether a merged record's `column` holds `expected` (a list by that column keeps only
/// those: an index entry or a replica row may be one a buffered update moved away from).
pub(super) fn has_value(record: &Value, column: &str, expected: &Value) -> bool {
    record.get(column) == Some(expected)
}

/// One way to write timestamps, whichever side a record comes from.
fn normalise(mut record: Map<String, Value>) -> Map<String, Value> {
    for column in TIMESTAMP_COLUMNS {
        if let Some(Value::String(text)) = record.get(column) {
            if let Ok(t) = DateTime::parse_from_rfc3339(text) {
                let t = t
                    .with_timezone(&Utc)
                    .to_rfc3339_opts(SecondsFormat::Micros, true);
                record.insert(column.to_owned(), json!(t));
            }
        }
    }
    record
}

/// A lifecycle hash (`HGETALL`, not empty) as `GET /transactions/{id}` answers it.
pub(super) fn lifecycle(id: Uuid, life: &HashMap<String, String>) -> Result<Value, UnknownState> {
    let state: Option<TxState> = life.get("state").map(|s| s.parse()).transpose()?;
    let text = |k: &str| life.get(k).map_or(Value::Null, |v| json!(v));
    let time = |k: &str| life.get(k).map_or(Value::Null, |v| iso_ms(v));
    let mut answer = json!({
        "transaction_id": id,
        "state": state,
        "op": text("op"),
        "buffered_at": time("buffered_at"),
        "forwarded_at": time("forwarded_at"),
        "replicated_at": time("replicated_at"),
        "dead_at": time("dead_at"),
        "commit_lsn": text("commit_lsn"),
        "reason": text("reason"),
        "sqlstate": text("sqlstate"),
        "attempts": life.get("attempts").and_then(|a| a.parse::<u64>().ok()),
        "source": "buffer",
    });
    // POST /transactions: its steps (step id, op, table, row id or row count).
    if let Some(steps) = life
        .get("steps")
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        answer["steps"] = steps;
    }
    Ok(answer)
}

/// A transaction Redis no longer keeps, from the ledger on the read source.
pub(super) fn ledger(id: Uuid, op: &str, applied_at: DateTime<Utc>) -> Value {
    json!({
        "transaction_id": id,
        "state": TxState::Replicated,
        "op": op,
        "applied_at": applied_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "source": "ledger",
    })
}

/// Unix milliseconds (as the scripts write them) as RFC 3339; `null` if unreadable.
fn iso_ms(ms: &str) -> Value {
    ms.parse::<i64>()
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map_or(Value::Null, |t| {
            json!(t.to_rfc3339_opts(SecondsFormat::Millis, true))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(partial: bool, columns: Value) -> OverlayRecord {
        OverlayRecord {
            writer: Some(Uuid::from_u128(7)),
            partial,
            indexes: Vec::new(),
            deleted: false,
            columns: columns.as_object().cloned().expect("an object"),
        }
    }

    #[test]
    fn a_buffered_delete_hides_the_record_whatever_the_replica_has() {
        let mut gone = overlay(true, json!({}));
        gone.deleted = true;
        assert_eq!(merged(Some(json!({"id": 1})), Some(gone.clone())), None);
        gone.partial = false;
        assert_eq!(merged(None, Some(gone)), None);
    }

    fn merged(replica: Option<Value>, overlay: Option<OverlayRecord>) -> Option<Value> {
        merge_one(replica, overlay).map(|(record, _)| Value::Object(record))
    }

    #[test]
    fn a_complete_overlay_record_wins_outright() {
        let row = json!({"id": "a", "status": "running", "obs_unit_id": 1});
        let image = overlay(false, json!({"id": "a", "status": "completed"}));
        assert_eq!(
            merged(Some(row), Some(image)),
            Some(json!({"id": "a", "status": "completed"}))
        );
    }

    #[test]
    fn a_partial_overlay_record_is_laid_over_the_row_or_shows_nothing_without_one() {
        let row = json!({"id": "a", "status": "running", "obs_unit_id": 1});
        let image = overlay(true, json!({"status": "completed"}));
        assert_eq!(
            merged(Some(row), Some(image.clone())),
            Some(json!({"id": "a", "status": "completed", "obs_unit_id": 1}))
        );
        assert_eq!(merged(None, Some(image)), None);
    }

    #[test]
    fn without_overlay_the_row_is_answered_as_replicated() {
        let row = json!({"id": "a"});
        let (record, writer) = merge_one(Some(row), None).expect("a record");
        assert_eq!(writer, None);
        let answer = answer(record, None);
        assert_eq!(
            answer["sync"],
            json!({"state": "replicated", "transaction_id": null, "lsn": null})
        );
        assert_eq!(merged(None, None), None);
    }

    #[test]
    fn the_sync_field_names_the_latest_writer_and_defaults_to_buffered() {
        let tx = Uuid::from_u128(7);
        let known = (Some(TxState::Forwarded), Some("0/16B3748".to_owned()));
        let sync = &answer(Map::new(), Some((tx, Some(&known))))["sync"];
        assert_eq!(
            *sync,
            json!({"state": "forwarded", "transaction_id": tx, "lsn": "0/16B3748"})
        );
        let sync = &answer(Map::new(), Some((tx, None)))["sync"];
        assert_eq!(
            *sync,
            json!({"state": "buffered", "transaction_id": tx, "lsn": null})
        );
    }

    #[test]
    fn a_list_keeps_only_records_whose_current_value_it_is() {
        let row = json!({"id": "a", "raw_data_package_id": "p1", "obs_unit_id": 1});
        let moved = overlay(true, json!({"raw_data_package_id": "p2"}));
        let (record, _) = merge_one(Some(row), Some(moved)).expect("a record");
        let record = Value::Object(record);
        assert!(has_value(&record, "raw_data_package_id", &json!("p2")));
        assert!(!has_value(&record, "raw_data_package_id", &json!("p1")));
        assert!(has_value(&record, "obs_unit_id", &json!(1)));
        assert!(
            !has_value(&record, "obs_unit_id", &json!("1")),
            "types count"
        );
    }

    #[test]
    fn timestamps_read_the_same_from_either_side() {
        let from_overlay = json!({"start_time": "2026-01-02T03:04:05.123456Z"});
        let from_replica = json!({"start_time": "2026-01-02T03:04:05.123456+00:00"});
        let a = answer(from_overlay.as_object().cloned().expect("map"), None);
        let b = answer(from_replica.as_object().cloned().expect("map"), None);
        assert_eq!(a, b);
        assert_eq!(a["start_time"], "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn a_lifecycle_hash_reads_with_typed_state_and_times() {
        let life: HashMap<String, String> = [("state", "dead"), ("buffered_at", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let id = Uuid::from_u128(1);
        let answer = lifecycle(id, &life).expect("a lifecycle");
        assert_eq!(answer["state"], "dead");
        assert_eq!(answer["buffered_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(answer["forwarded_at"], Value::Null);
        let bad: HashMap<String, String> = [("state".to_owned(), "lost".to_owned())].into();
        assert!(lifecycle(id, &bad).is_err());
    }
}
