//! Hostile requests, for property tests: for every write operation, bodies that are
//! arbitrary bytes, arbitrary JSON or (most of them) a valid body with a few mutations, and
//! TCP lines built the same way; and ([`expect`]) the answer each must get short of Redis.
//!
//! Compiled for this crate's tests and with the `proptest` feature, which the integration
//! tests turn on; never in a build of the service.

mod expect;
mod json;
#[cfg(test)]
mod tests;
mod values;

pub use expect::{error_shape, expected, expected_line, Verdict};
pub use json::{Json, Mutation, Shown};
pub use values::value;

use ops_db_actors::domain::OperationKind;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

use values::{domain_strings, edgy, field_name};

/// The executed obs unit of the valid bodies (any UUID: ingest does not look it up).
pub const EOU: &str = "0193d0a8-5f6e-7c3a-9b1e-2f4a5b6c7d8e";
const PACKAGE: &str = "0193d0a8-6a11-7c3a-9b1e-2f4a5b6c7d8f";
const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A body `kind` accepts, with every optional field present, so that mutations reach all.
pub fn valid_body(kind: OperationKind) -> Value {
    let file = |n: u32| {
        json!({
            "name": format!("scan_{n:04}.fits"),
            "relative_path": format!("2026/11/24/scan_{n:04}.fits"),
            "executed_obs_unit_id": EOU,
            "raw_data_package_id": PACKAGE,
            "size": 1024,
            "checksum": SHA256,
            "checksum_algorithm": "sha256",
            "file_type": "fits",
            "created_at": "2026-11-24T03:00:00.123456Z",
            "meta": {"scan": n, "tags": ["a", "b"]},
        })
    };
    match kind {
        OperationKind::StartExecutedObsUnit => json!({
            "obs_unit_id": 1,
            "start_time": "2026-11-24T03:00:00Z",
            "instrument_module": "prime-cam",
            "meta": {"source": "orion", "nested": {"depth": [1, 2.5, null]}},
        }),
        OperationKind::FinishExecutedObsUnit => json!({
            "status": "completed",
            "end_time": "2026-11-24T04:00:00Z",
            "meta": {"reason": null},
        }),
        OperationKind::CreateRawDataFile => file(1),
        OperationKind::BulkCreateRawDataFiles => json!([file(1), file(2)]),
        OperationKind::CreateRawDataPackage => json!({
            "name": "pkg_0001",
            "executed_obs_unit_id": EOU,
            "relative_path": "2026/11/24/pkg_0001.tar",
            "meta": {},
        }),
        OperationKind::FinalizeRawDataPackage => json!({
            "size": 2048,
            "checksum": SHA256.to_uppercase(),
            "checksum_algorithm": "sha256",
            "file_count": 2,
            "meta": {"files": 2},
        }),
        // Not generated (`GENERATED`): its answers depend on the live model registry;
        // `tests/it/transactions.rs` covers its hostile names and bodies.
        OperationKind::Transaction => json!({"steps": []}),
    }
}

/// The rows of the operations table the generators cover: every fixed operation.
pub fn generated() -> impl Iterator<Item = &'static crate::operations::OperationSpec> {
    crate::operations::OPERATIONS
        .iter()
        .filter(|spec| OperationKind::PRESETS.contains(&spec.kind))
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let leaf = prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Drop),
        3 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        3 => (any::<Index>(), edgy()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Repeat(i, v)),
        2 => (field_name(), value()).prop_map(|(k, v)| Mutation::Add(k, v)),
    ];
    prop_oneof![
        3 => leaf.clone(),
        1 => (any::<Index>(), leaf).prop_map(|(i, m)| Mutation::Inside(i, Box::new(m))),
    ]
}

/// `valid` with one mutation (most often: a second one often hides the first's
/// rejection behind its own) or a few.
pub fn near_valid(valid: Value) -> impl Strategy<Value = Json> {
    let valid = Json::from_value(&valid);
    let mutations = prop_oneof![2 => vec(mutation(), 1..=1), 1 => vec(mutation(), 2..=4)];
    mutations.prop_map(move |mutations| {
        let mut json = valid.clone();
        for m in &mutations {
            m.apply(&mut json);
        }
        json
    })
}

/// A change to the text itself: cut short, a byte put in, a byte-order mark, trailing text.
fn edit(text: String) -> impl Strategy<Value = Vec<u8>> {
    let bytes = text.into_bytes();
    prop_oneof![
        any::<Index>().prop_map({
            let bytes = bytes.clone();
            move |i| bytes[..i.index(bytes.len() + 1)].to_vec()
        }),
        (any::<Index>(), any::<u8>()).prop_map({
            let bytes = bytes.clone();
            move |(i, b)| {
                let mut out = bytes.clone();
                out.insert(i.index(out.len() + 1), b);
                out
            }
        }),
        Just([b"\xef\xbb\xbf".as_slice(), &bytes].concat()),
        select(vec!["}", "]", " x", ",", "\u{0}", " \t\r"]).prop_map(move |tail| [
            bytes.as_slice(),
            tail.as_bytes()
        ]
        .concat()),
    ]
}

/// A hostile body for `kind`.
pub fn body(kind: OperationKind) -> BoxedStrategy<Vec<u8>> {
    let valid = valid_body(kind);
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => value().prop_map(|v| v.text().into_bytes()),
        6 => near_valid(valid.clone()).prop_map(|v| v.text().into_bytes()),
        2 => near_valid(valid).prop_flat_map(|v| edit(v.text())),
    ]
    .boxed()
}

/// The path id of an update: mostly the valid one, or another spelling, or anything that
/// can stand in a path segment (not empty, `.` or `..`, which URLs resolve away).
pub fn path_id() -> BoxedStrategy<String> {
    prop_oneof![
        8 => Just(EOU.to_owned()),
        1 => select(domain_strings()),
        1 => any::<String>(),
    ]
    .prop_filter("a path segment", |id| {
        !matches!(id.as_str(), "" | "." | "..")
    })
    .boxed()
}

/// An `Idempotency-Key`: mostly none, sometimes a valid one, sometimes not.
pub fn idempotency_key() -> BoxedStrategy<Option<Vec<u8>>> {
    prop_oneof![
        12 => Just(None),
        2 => "[!-~]{1,40}".prop_map(|k| Some(k.into_bytes())),
        1 => prop_oneof![
            Just(Vec::new()),
            Just(b"has space".to_vec()),
            Just(vec![b'k'; 256]),
            Just("ü".as_bytes().to_vec()),
            vec(any::<u8>(), 1..20),
        ]
        .prop_map(Some),
    ]
    .boxed()
}

/// A TCP request line for a connection authenticated with `token` (it may contain `\n`:
/// then it is several lines).
pub fn line(token: &str) -> BoxedStrategy<Vec<u8>> {
    let token = token.to_owned();
    let request = (0..OperationKind::PRESETS.len()).prop_flat_map(move |i| {
        let kind = OperationKind::PRESETS[i];
        let mut envelope = vec![
            ("op".to_owned(), Json::string(kind.name())),
            ("token".to_owned(), Json::string(&token)),
            ("request_id".to_owned(), Json::Raw("7".to_owned())),
        ];
        if kind.needs_id() {
            envelope.push(("id".to_owned(), Json::string(EOU)));
        }
        let valid = Json::from_value(&valid_body(kind));
        let body = prop_oneof![Just(valid), near_valid(valid_body(kind)).boxed()];
        (body, vec(mutation(), 0..=2)).prop_map(move |(body, mutations)| {
            let mut json = Json::Object(envelope.clone());
            if let Json::Object(fields) = &mut json {
                fields.push(("body".to_owned(), body));
            }
            for m in &mutations {
                m.apply(&mut json);
            }
            json.text()
        })
    });
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => value().prop_map(|v| v.text().into_bytes()),
        6 => request.clone().prop_map(String::into_bytes),
        1 => request.prop_flat_map(edit),
    ]
    .boxed()
}
