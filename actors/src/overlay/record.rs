//! One overlay record, as written and as read.
//!
//! The record hash (`Keys::record`) holds the after-image of a row not yet replicated:
//! each written column → the JSON text of its value (but for the key column `id`, which
//! the key gives back: [`OverlayRecord::with_id`]); `_tx` = the latest writer's
//! transaction id; `_partial` = `1` when only updates of it are buffered (its insert is
//! already replicated, so the image is laid over the replica's row); `_idx` = JSON list
//! of the index sets that hold its id, one per indexed column with a value (so an update
//! of that column moves the entry, and whoever releases the record removes it), each as
//! `{column}:{value}`, its key without the prefix the record's key gives
//! (`scripts/index_list.lua`; whole keys from older builds);
//! `_u:{tx}` = the undo entry of a writer `tx` that wrote over an image the overlay
//! already held, kept only while `tx` is buffered (see `scripts/buffer.lua`): what the
//! record was before `tx`, restored if `tx` dies.
//!
//! Write side: [`OverlayWrite`], what the IngestActor hands `buffer.lua` for each step of
//! a transaction. Read side: [`OverlayRecord`], the hash parsed for merged reads.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::Keys;
use crate::domain::{Step, Table};

/// One step's overlay write; a JSON list of them is `buffer.lua`'s ARGV[9]. The short
/// field names are the script's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverlayWrite {
    /// The record hash.
    #[serde(rename = "k")]
    pub key: String,
    /// The member added to the index sets: the row's key as text.
    pub id: String,
    /// An update or a delete (`u = 1`): written over a record the overlay does not hold,
    /// it is kept `_partial`.
    #[serde(rename = "u", serialize_with = "as_flag")]
    pub update: bool,
    /// Column names and the JSON text of their values, flattened to `[col, json, ...]`
    /// for one `HSET`. A delete writes only `_del` = `1`: the record reads as missing
    /// until the delete is replicated (or restored if it dies, as any write).
    #[serde(rename = "f", serialize_with = "flattened")]
    pub columns: Vec<(String, String)>,
    /// Per indexed column the step writes: the column and the index set its id joins,
    /// `""` for a null value (it leaves the column's previous set, and joins none).
    #[serde(rename = "i")]
    pub indexes: Vec<(String, String)>,
}

/// The field of a deleted record.
pub const DELETED: &str = "_del";

impl OverlayWrite {
    pub fn of_step(keys: &Keys, step: &Step) -> Self {
        let table = step.table();
        let indexed = Table::indexed_columns_of(table);
        let id = step.id().text();
        let (columns, indexes) = match step.columns() {
            Some(written) => {
                let indexes = indexed
                    .iter()
                    .filter_map(|c| written.get(*c).map(|v| (*c, v)))
                    .map(|(c, v)| {
                        let set = match v {
                            Value::Null => String::new(),
                            v => keys.index_of(table, c, &index_value(v)),
                        };
                        (c.to_owned(), set)
                    })
                    .collect();
                let columns = written
                    .iter()
                    .filter(|(column, value)| !is_key_column(column, value, &id))
                    .map(|(column, value)| (column.clone(), value.to_string()))
                    .collect();
                (columns, indexes)
            }
            // A deleted record leaves every index set.
            None => (
                vec![(DELETED.to_owned(), "1".to_owned())],
                indexed
                    .iter()
                    .map(|c| ((*c).to_owned(), String::new()))
                    .collect(),
            ),
        };
        Self {
            key: keys.record_of(table, &id),
            id,
            update: !matches!(step, Step::Insert { .. }),
            columns,
            indexes,
        }
    }
}

/// The key column `id` holding the record's own key (text: a UUID) is not stored: the
/// record's key gives it back to readers ([`OverlayRecord::with_id`]), and the scripts
/// never read it. It is about 50 bytes of every record, in the AOF and in memory. (A
/// table keyed by another column keeps its columns whole.)
fn is_key_column(column: &str, value: &Value, id: &str) -> bool {
    column == KEY_COLUMN && value.as_str() == Some(id)
}

/// The key column of the tables merged reads serve (`Table`).
const KEY_COLUMN: &str = "id";

/// How a column value names its index set: strings (UUIDs) as they are, anything else
/// (integers) as its JSON text.
pub(crate) fn index_value(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn as_flag<S: Serializer>(update: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(u8::from(*update))
}

fn flattened<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().flat_map(|(k, v)| [k, v]))
}

/// An undo entry `_u:{tx}` as `overlay_write.lua` writes it (its index part `x`, one entry
/// per indexed column the writer wrote, is the scripts' alone).
#[derive(Debug, Deserialize)]
struct Undo {
    /// The previous writer.
    t: String,
    /// Present if the previous image was partial.
    p: Option<Value>,
    /// Per column written: its previous JSON text, or `false` if it was absent. (cjson
    /// writes an empty table as `{}`.)
    #[serde(default)]
    c: HashMap<String, Value>,
}

/// A record hash as merged reads see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OverlayRecord {
    /// `_tx`: the latest writer (`None` if absent or not a UUID).
    pub writer: Option<Uuid>,
    /// `_partial`: the image is only the updated columns, to lay over the replica's row.
    pub partial: bool,
    /// `_idx`: the index sets holding its id, as stored (`{column}:{value}`, or whole keys
    /// from older builds).
    pub indexes: Vec<String>,
    /// `_del`: a buffered delete: the record reads as missing.
    pub deleted: bool,
    /// Every other field, its JSON text parsed (`null` if unreadable).
    pub columns: Map<String, Value>,
}

impl OverlayRecord {
    /// Parses a record hash as readers may see it. A record whose latest writer is still
    /// being staged (`staging`: the staging set, `scripts/stage.lua`) is not that
    /// writer's yet: it reads as it was before it, from the writer's undo entry (its
    /// columns' previous values, its previous writer, whether it was partial), or as not
    /// in the overlay at all if that writer made it (no undo entry).
    pub fn visible(mut hash: HashMap<String, String>, staging: &HashSet<String>) -> Option<Self> {
        let Some(writer) = hash.get("_tx").filter(|w| staging.contains(*w)).cloned() else {
            return Self::parse(hash);
        };
        let undo: Undo = serde_json::from_str(&hash.remove(&format!("_u:{writer}"))?).ok()?;
        for (column, previous) in undo.c {
            match previous {
                Value::String(text) => hash.insert(column, text),
                _ => hash.remove(&column),
            };
        }
        hash.insert("_tx".into(), undo.t);
        if undo.p.is_some() {
            hash.insert("_partial".into(), "1".into());
        } else {
            hash.remove("_partial");
        }
        Self::parse(hash)
    }

    /// The record of the row keyed `id` (a read table's, keyed by `id`): its key column,
    /// which the overlay does not store, put back (a record written by an older build has
    /// it already).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.columns
            .entry(KEY_COLUMN)
            .or_insert_with(|| Value::String(id.to_string()));
        self
    }

    /// Parses a record hash as `HGETALL` returns it; `None` for an empty one (no such key:
    /// the overlay does not hold the record).
    pub fn parse(hash: HashMap<String, String>) -> Option<Self> {
        if hash.is_empty() {
            return None;
        }
        let mut record = Self::default();
        for (field, text) in hash {
            match field.as_str() {
                "_tx" => record.writer = Uuid::parse_str(&text).ok(),
                "_partial" => record.partial = true,
                "_idx" => record.indexes = serde_json::from_str(&text).unwrap_or_default(),
                DELETED => record.deleted = true,
                // Fields of ours start with `_`; no column does.
                f if f.starts_with('_') => {}
                _ => {
                    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    record.columns.insert(field, value);
                }
            }
        }
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::Table;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn a_write_serialises_to_what_buffer_lua_reads() {
        let keys = Keys::new("s");
        let (id, eou) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let step = Step::Insert {
            table: "raw_data_file".into(),
            id: id.into(),
            values: object(json!({"id": id, "executed_obs_unit_id": eou,
                "raw_data_package_id": null, "size": 7})),
        };
        let write = serde_json::to_value(OverlayWrite::of_step(&keys, &step)).expect("json");
        let q_eou = format!("\"{eou}\"");
        assert_eq!(
            write,
            json!({
                "k": keys.record(Table::RawDataFile, id),
                "id": id,
                "u": 0,
                "f": ["executed_obs_unit_id", q_eou,
                      "raw_data_package_id", "null", "size", "7"],
                "i": [
                    ["executed_obs_unit_id",
                     keys.index(Table::RawDataFile, "executed_obs_unit_id", &eou.to_string())],
                    ["raw_data_package_id", ""],
                ],
            }),
            "a null indexed column joins no index set; the key column is left to the key"
        );
        let record = OverlayRecord::parse(hash(&[("_tx", &eou.to_string()), ("size", "7")]))
            .expect("a record")
            .with_id(id);
        assert_eq!(record.columns["id"], json!(id));
        assert_eq!(
            record.clone().with_id(eou).columns["id"],
            json!(id),
            "kept if stored"
        );
    }

    /// A column `id` that is not the record's key, or not text, is stored as written.
    #[test]
    fn only_the_key_itself_is_left_out() {
        let keys = Keys::new("s");
        let step = Step::Insert {
            table: "other".into(),
            id: crate::domain::RowId::Int(7),
            values: object(json!({"id": 7, "name": "x"})),
        };
        let write = OverlayWrite::of_step(&keys, &step);
        assert_eq!(write.columns.len(), 2, "{:?}", write.columns);
    }

    #[test]
    fn an_update_is_flagged_and_integers_name_their_index_by_their_text() {
        let keys = Keys::new("s");
        let step = Step::Update {
            table: "executed_obs_unit".into(),
            id: Uuid::from_u128(3).into(),
            set: object(json!({"obs_unit_id": 7})),
        };
        let write = OverlayWrite::of_step(&keys, &step);
        assert!(write.update);
        assert_eq!(
            write.indexes,
            [(
                "obs_unit_id".to_owned(),
                keys.index(Table::ExecutedObsUnit, "obs_unit_id", "7")
            )]
        );
        assert_eq!(serde_json::to_value(&write).expect("json")["u"], json!(1));
    }

    #[test]
    fn a_record_hash_parses_into_writer_flags_indexes_and_columns() {
        let tx = Uuid::from_u128(9);
        let hash: HashMap<String, String> = [
            ("_tx", tx.to_string()),
            ("_partial", "1".into()),
            ("_idx", r#"["s:idx:a"]"#.into()),
            ("_u:0000", r#"{"t": "x"}"#.into()),
            ("status", r#""completed""#.into()),
            ("obs_unit_id", "4".into()),
            ("broken", "{".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let record = OverlayRecord::parse(hash).expect("a record");
        assert_eq!(record.writer, Some(tx));
        assert!(record.partial);
        assert_eq!(record.indexes, ["s:idx:a"]);
        assert_eq!(
            Value::Object(record.columns),
            json!({"status": "completed", "obs_unit_id": 4, "broken": null})
        );
        assert_eq!(OverlayRecord::parse(HashMap::new()), None);
    }

    fn hash(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A record staged over a pending image reads as that image: the staged columns back
    /// to their previous values (or gone), the previous writer, its partial flag.
    #[test]
    fn a_staged_write_reads_as_the_image_before_it() {
        let (before, staged) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let undo = json!({"t": before.to_string(), "p": 1,
            "c": {"status": "\"started\"", "note": false}});
        let record = hash(&[
            ("_tx", &staged.to_string()),
            ("_idx", "[]"),
            ("status", "\"completed\""),
            ("note", "\"late\""),
            ("obs_unit_id", "4"),
            (&format!("_u:{staged}"), &undo.to_string()),
        ]);
        let staging: HashSet<String> = [staged.to_string()].into();
        let seen = OverlayRecord::visible(record.clone(), &staging).expect("an image");
        assert_eq!(seen.writer, Some(before));
        assert!(seen.partial);
        assert_eq!(
            Value::Object(seen.columns),
            json!({"status": "started", "obs_unit_id": 4})
        );
        // Committed (no longer staging): the staged image itself.
        let seen = OverlayRecord::visible(record, &HashSet::new()).expect("an image");
        assert_eq!(seen.writer, Some(staged));
        assert!(!seen.partial);
        assert_eq!(seen.columns["status"], json!("completed"));
    }

    /// A record the staged writer made (no undo entry) is not in the overlay yet; nor is
    /// one it wrote over a replica row (partial, no undo entry).
    #[test]
    fn a_record_made_by_a_staged_write_is_not_there_yet() {
        let staged = Uuid::from_u128(2);
        let staging: HashSet<String> = [staged.to_string()].into();
        for record in [
            hash(&[("_tx", &staged.to_string()), ("size", "7")]),
            hash(&[
                ("_tx", &staged.to_string()),
                ("_partial", "1"),
                ("size", "7"),
            ]),
        ] {
            assert_eq!(OverlayRecord::visible(record, &staging), None);
        }
        let other = hash(&[("_tx", &Uuid::from_u128(3).to_string()), ("size", "7")]);
        assert!(OverlayRecord::visible(other, &staging).is_some());
    }
}
