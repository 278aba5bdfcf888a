//! Values that look like something: domain strings, odd scalars, field names, any JSON.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::{Json, EOU, SHA256};

/// Strings the domain reads as something: times (in and out of the accepted years,
/// impossible dates, leap seconds, no zone), UUIDs in every spelling, checksums of the
/// wrong length or alphabet, enum values nearly right, whitespace and NUL.
pub(super) fn domain_strings() -> Vec<String> {
    let uuid_variants = [
        EOU.to_owned(),
        EOU.to_uppercase(),
        EOU.replace('-', ""),
        format!("{{{EOU}}}"),
        format!("urn:uuid:{EOU}"),
        EOU[..35].to_owned(),
        format!("{EOU}0"),
        EOU.replace('-', "_"),
        EOU.replacen('0', "g", 1),
        "00000000-0000-0000-0000-000000000000".to_owned(),
        "not-a-uuid".to_owned(),
    ];
    let checksums = [
        "ab".repeat(31),
        "ab".repeat(33),
        "AB".repeat(32),
        "zz".repeat(32),
        "ab".repeat(20),
        "ab".repeat(16),
        format!("{} ", &SHA256[..63]),
        "é".repeat(32),
    ];
    let times = [
        "2026-11-24T03:00:00Z",
        "+20250-01-01T00:00:00Z",
        "1899-12-31T23:59:59Z",
        "1900-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "10000-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "-0001-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2016-12-31T23:59:60Z",
        "2026-11-24T03:00:00+23:59",
        "2026-11-24T03:00:00-25:00",
        "2026-11-24T03:00:00",
        "2026-11-24",
        "1732417200",
    ];
    let words = [
        "",
        " ",
        "\t\n",
        "\0",
        "a\0b",
        "completed",
        "failed",
        "aborted",
        "COMPLETED",
        "done",
        " completed",
        "sha256",
        "sha1",
        "md5",
        "SHA256",
        "crc32",
        "NaN",
        "Infinity",
        "null",
        "-0",
        "1",
        "auth",
        "../etc/passwd",
        "a/../../b",
        "a\\..\\b",
        "/abs/a.fits",
        "\\\\share\\a.fits",
        "a..b/c.fits",
        "a\tb.fits",
        "a\u{1b}[2J",
        "a\u{85}b",
        "a\u{7f}",
    ];
    let long = [0, 1, 254, 255, 256, 4095, 4096, 4097, 6000].map(|n| "é".repeat(n));
    uuid_variants
        .into_iter()
        .chain(checksums)
        .chain(times.map(str::to_owned))
        .chain(words.map(str::to_owned))
        .chain(long)
        .collect()
}

/// Scalars as raw text: numbers at and past the edges of i64 and f64, spellings JSON does
/// not allow, and strings with escapes serde must refuse.
const ODD_SCALARS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-1",
    "-0",
    "0.5",
    "1.0",
    "1e3",
    "1E400",
    "-1e400",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "123456789012345678901234567890",
    "01",
    "+1",
    ".5",
    "1.",
    "0x1F",
    "NaN",
    "Infinity",
    "-Infinity",
    "{}",
    "[]",
    "\"\"",
    "[null]",
    "{\"\":null}",
    "\"\\ud800\"",
    "\"\\u00\"",
    "\"a\u{1}b\"",
    "\"\\x41\"",
    "'single'",
    "\"unterminated",
    "\"\\u0000\"",
    "",
];

/// Field names: every operation's and the envelope's, near misses and arbitrary ones.
pub(super) fn field_name() -> impl Strategy<Value = String> {
    const NAMES: &[&str] = &[
        "obs_unit_id",
        "start_time",
        "instrument_module",
        "meta",
        "status",
        "end_time",
        "name",
        "relative_path",
        "executed_obs_unit_id",
        "raw_data_package_id",
        "size",
        "checksum",
        "checksum_algorithm",
        "file_type",
        "created_at",
        "file_count",
        "op",
        "token",
        "request_id",
        "idempotency_key",
        "id",
        "body",
        "obs_unit",
        "Name",
        "",
    ];
    prop_oneof![4 => select(NAMES).prop_map(str::to_owned), 1 => any::<String>()]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        3 => select(domain_strings()),
        1 => "[\\x00-\\x1f\\x7f \u{85}\u{a0}\u{2028}]{0,8}",
        1 => "[a-zü🙂\u{202e}\u{200b}\u{301}\u{fffd}]{1,300}",
    ]
}

/// Any JSON value, or text that only looks like one, shallow or deeply nested.
pub fn value() -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        4 => select(ODD_SCALARS).prop_map(|s| Json::Raw(s.to_owned())),
        6 => text().prop_map(|s| Json::string(&s)),
        2 => any::<i64>().prop_map(|n| Json::Raw(n.to_string())),
        1 => any::<u64>().prop_map(|n| Json::Raw(n.to_string())),
        // Not JSON when not finite ("NaN", "inf").
        1 => any::<f64>().prop_map(|x| Json::Raw(x.to_string())),
        // Nested past serde_json's recursion limit (128) and within it.
        1 => (1usize..300).prop_map(|d| Json::Raw(format!("{}{}", "[".repeat(d), "]".repeat(d)))),
        1 => (1usize..300).prop_map(|d| Json::Raw(format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d)))),
    ];
    let nested = leaf.clone().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Json::Array),
            vec((field_name(), inner), 0..4).prop_map(Json::Object),
        ]
    });
    prop_oneof![4 => leaf, 1 => nested].boxed()
}

/// A value of the right type, often, but one validation refuses: a domain string or an
/// integer at an edge.
pub(super) fn edgy() -> impl Strategy<Value = Json> {
    const INTEGERS: &[&str] = &[
        "0",
        "-1",
        "1",
        "-9223372036854775808",
        "9223372036854775807",
    ];
    prop_oneof![
        3 => select(domain_strings()).prop_map(|s| Json::string(&s)),
        1 => select(INTEGERS).prop_map(|n| Json::Raw(n.to_owned())),
    ]
}
