//! Sizes in bytes in the config (`#[serde(with = "size")]`): an integer of bytes as before,
//! or a string such as `"1 GiB"`, `"512MiB"` or `"8 MB"` (parsed by `bytesize`: `KiB`,
//! `MiB`, `GiB` are powers of 1024; `KB`, `MB`, `GB` powers of 1000). Written back as an
//! integer.

use std::fmt;

use bytesize::ByteSize;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serialize, Serializer};

struct Size;

const EXPECTED: &str = "a number of bytes, or a size such as \"1 GiB\" or \"512 MiB\"";

impl Visitor<'_> for Size {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
        Ok(bytes)
    }

    fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
        u64::try_from(bytes).map_err(|_| E::invalid_value(de::Unexpected::Signed(bytes), &self))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
        text.trim()
            .parse::<ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
    }
}

pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let bytes = deserializer.deserialize_any(Size)?;
    T::try_from(bytes)
        .map_err(|_| de::Error::custom(format!("{bytes} bytes is more than this setting can hold")))
}

pub fn serialize<S: Serializer, T: Serialize>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    value.serialize(serializer)
}
