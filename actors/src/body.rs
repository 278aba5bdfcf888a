//! How a transaction's JSON is kept in Redis: packed. The buffer's stream (field `tx`),
//! the dead-letter stream (`tx`, copied from the stream entry as it is) and the resend
//! window (`z`) hold one version byte, [`V1`], then a zstd frame compressed against a
//! fixed dictionary of typical transactions and answers (`body/dict-v1.jsonl`: one
//! transaction of each operation and the answers a write gets, ids and times replaced).
//! An idempotency record's answer is packed the same way. A start-observation's 410
//! bytes of JSON become 112, a registered file's about 100: the stream entry was the
//! largest part of what a buffered write costs Redis (DESIGN §8).
//!
//! [`unpack`] also reads what older builds and hand-written entries hold: JSON text as it
//! is (it begins with `{`; a version byte never does), and a plain zstd frame (the resend
//! window's entries before the dictionary). Anything else comes back as it was, for the
//! caller's own checks to refuse.
//!
//! The dictionary is part of the stored format: entries in Redis are only readable with
//! the dictionary they were packed with. Never edit `dict-v1.jsonl` (a test pins its
//! digest); a better one becomes version 2, beside it, and [`unpack`] keeps reading both.
//! No Lua script reads a packed body: they copy it as bytes.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::LazyLock;

use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The first byte of a body packed with dictionary 1.
pub const V1: u8 = 0x01;

/// A zstd frame's first bytes (its magic number, little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

const DICT_V1: &[u8] = include_bytes!("body/dict-v1.jsonl");

/// zstd's default level: a few hundred MB/s on one core, and for bodies of a few hundred
/// bytes the higher levels win almost nothing against the dictionary.
const LEVEL: i32 = 3;

/// Most bytes a body may unpack to: far above any transaction the service accepts
/// (`http.max_body_bytes`), so a damaged entry cannot take the memory.
pub const MAX_UNPACKED: u64 = 256 * 1024 * 1024;

static ENCODER_V1: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICT_V1, LEVEL));
static DECODER_V1: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICT_V1));

thread_local! {
    // One context per thread, made once: a zstd context costs more to make than a small
    // body does to compress.
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
    static PLAIN: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("a packed body does not decompress: {0}")]
    Corrupt(#[from] std::io::Error),
    #[error("a packed body does not say its size, or says more than {MAX_UNPACKED} bytes")]
    Size,
}

/// A transaction's JSON, packed for Redis ([`V1`], then the frame). Compressing bytes in
/// memory fails only if zstd cannot allocate its context; the JSON is then kept as it is,
/// which every reader takes too.
pub fn pack(json: &[u8]) -> Vec<u8> {
    let packed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = match cell.as_mut() {
            Some(c) => c,
            None => cell.insert(Compressor::with_prepared_dictionary(&ENCODER_V1).ok()?),
        };
        let mut out = Vec::with_capacity(1 + json.len() / 3);
        out.push(V1);
        let frame = compressor.compress(json).ok()?;
        out.extend_from_slice(&frame);
        Some(out)
    });
    packed.unwrap_or_else(|| json.to_vec())
}

/// Whether `stored` is packed (by [`pack`], or an older window's plain zstd frame).
pub fn is_packed(stored: &[u8]) -> bool {
    frame(stored).is_some()
}

/// The zstd frame `stored` holds and whether it was packed against the dictionary; `None`
/// if it is not packed.
fn frame(stored: &[u8]) -> Option<(&[u8], bool)> {
    match stored.first() {
        Some(&V1) => Some((&stored[1..], true)),
        _ if stored.starts_with(&ZSTD_MAGIC) => Some((stored, false)),
        _ => None,
    }
}

/// What a frame says it unpacks to: `None` if it does not say, or says more than
/// [`MAX_UNPACKED`].
fn frame_size(frame: &[u8]) -> Option<usize> {
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= MAX_UNPACKED => usize::try_from(size).ok(),
        _ => None,
    }
}

/// The JSON back from what Redis holds: unpacked if it is packed, else as it is (JSON
/// written by an older build, or bytes that are no transaction at all: the caller's
/// checks decide).
pub fn unpack(stored: &[u8]) -> Result<Cow<'_, [u8]>, UnpackError> {
    let Some((frame, with_dict)) = frame(stored) else {
        return Ok(Cow::Borrowed(stored));
    };
    let size = frame_size(frame).ok_or(UnpackError::Size)?;
    let cell = if with_dict { &DECOMPRESSOR } else { &PLAIN };
    let json = cell.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(d) => d,
            None if with_dict => cell.insert(Decompressor::with_prepared_dictionary(&DECODER_V1)?),
            None => cell.insert(Decompressor::new()?),
        };
        decompressor.decompress(frame, size)
    })?;
    Ok(Cow::Owned(json))
}

/// How many bytes of JSON `stored` holds, read from a packed body's frame header without
/// unpacking it (what bounds a batch is JSON, not what Redis holds); anything else, and a
/// frame that does not say (which [`unpack`] refuses), counts as its own length.
pub fn json_len(stored: &[u8]) -> usize {
    frame(stored)
        .and_then(|(frame, _)| frame_size(frame))
        .unwrap_or(stored.len())
}

/// Packs `stored` unless it is packed already (a stream entry an older build wrote).
pub fn packed(stored: &[u8]) -> Cow<'_, [u8]> {
    if is_packed(stored) {
        Cow::Borrowed(stored)
    } else {
        Cow::Owned(pack(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const START: &str = r#"{"id":"01a24b6a-04cf-703d-add8-e36a13640609","site":"bench","op":"executed_obs_units.start","created_at":"2026-12-06T12:52:48.975555Z","steps":[{"kind":"insert","table":"executed_obs_unit","id":"01a24b6a-04cf-703d-add8-e36bcc7a573e","values":{"id":"01a24b6a-04cf-703d-add8-e36bcc7a573e","instrument_module":"prime-cam","meta":{},"obs_unit_id":3,"start_time":"2026-12-06T12:52:48.975555Z","status":"running"}}]}"#;

    #[test]
    fn the_dictionary_never_changes() {
        // Bodies in Redis are readable only with the dictionary they were packed with:
        // a new dictionary is a new version beside this one, never an edit of it.
        assert_eq!(
            hex::encode(Sha256::digest(DICT_V1)),
            "efa165e526858ed42656a6eecd9294f628083ad1c1e2d0b7714c6ec677708ce2",
            "body/dict-v1.jsonl changed: restore it and add a version 2 instead"
        );
    }

    #[test]
    fn a_body_comes_back_as_it_was_and_a_third_of_its_size() {
        let packed = pack(START.as_bytes());
        assert_eq!(packed[0], V1);
        assert!(
            packed.len() * 3 < START.len(),
            "{} of {}",
            packed.len(),
            START.len()
        );
        assert_eq!(unpack(&packed).expect("unpacks"), START.as_bytes());
        assert_eq!(json_len(&packed), START.len());
        assert_eq!(json_len(START.as_bytes()), START.len());
        assert_eq!(json_len(&[V1]), 1, "no frame: its own length");
        assert!(is_packed(&packed));
        assert!(matches!(self::packed(&packed), Cow::Borrowed(_)));
    }

    #[test]
    fn a_large_body_packs_and_unpacks() {
        let steps: Vec<_> = (0..1000)
            .map(|i| {
                serde_json::json!({"kind": "insert", "table": "raw_data_file",
                "id": format!("01a24b6a-bb43-721b-a238-{i:012x}"),
                "values": {"name": format!("scan_{i:04}.fits"), "size": 1000 + i}})
            })
            .collect();
        let body = serde_json::json!({"id": "01a24b6a-bb43-721b-a238-be567bc5034a",
            "steps": steps})
        .to_string();
        let packed = pack(body.as_bytes());
        assert!(
            packed.len() * 4 < body.len(),
            "{} of {}",
            packed.len(),
            body.len()
        );
        assert_eq!(unpack(&packed).expect("unpacks"), body.as_bytes());
    }

    #[test]
    fn json_and_an_older_plain_frame_are_read_too() {
        assert!(matches!(unpack(START.as_bytes()), Ok(Cow::Borrowed(_))));
        let plain = zstd::bulk::compress(START.as_bytes(), 3).expect("compresses");
        assert!(is_packed(&plain));
        assert_eq!(unpack(&plain).expect("unpacks"), START.as_bytes());
        assert!(!is_packed(START.as_bytes()));
        assert_eq!(
            unpack(&self::packed(START.as_bytes())).expect("unpacks"),
            START.as_bytes()
        );
        // Not a transaction at all: handed back for the caller to refuse.
        assert_eq!(unpack(b"not json").expect("as it is"), &b"not json"[..]);
        assert_eq!(unpack(b"").expect("as it is"), &b""[..]);
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        let mut packed = pack(START.as_bytes());
        packed.truncate(packed.len() / 2);
        assert!(unpack(&packed).is_err());
        assert!(unpack(&[V1]).is_err());
        assert!(unpack(&[V1, 0x28, 0xb5, 0x2f, 0xfd, 0, 0]).is_err());
        let mut flipped = pack(START.as_bytes());
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        // Either refused or different: never a panic. (zstd checks no checksum here.)
        if let Ok(json) = unpack(&flipped) {
            assert_ne!(json, START.as_bytes());
        }
    }
}
