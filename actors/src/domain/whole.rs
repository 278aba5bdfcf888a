//! Integers as JSON Schema counts them: `3` and also `3.0` (a number with a zero fraction
//! is an `integer` to JSON Schema, and so to the OpenAPI document). serde alone refuses
//! `3.0` for an `i64`; these read it as `3`, on both facades. A fraction (`3.5`) or a value
//! beyond the type's range is still refused, as `invalid_field` naming the field.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// 2^53: below it every float without a fraction is exactly the integer it spells. 2^53
/// itself is not taken: `9007199254740993.0` parses to it (the nearest double), so a
/// double of 2^53 may have been spelled as another integer.
const EXACT: f64 = 9_007_199_254_740_992.0;

struct Whole<T>(std::marker::PhantomData<T>);

macro_rules! whole {
    ($ty:ty, $name:ident, $opt:ident) => {
        impl<'de> Visitor<'de> for Whole<$ty> {
            type Value = $ty;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "an integer from {} to {} (a zero fraction, `3.0`, is allowed)",
                    <$ty>::MIN,
                    <$ty>::MAX
                )
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                <$ty>::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                <$ty>::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                if v.fract() == 0.0 && v.abs() < EXACT {
                    // Exact, and within i64; the conversion to the type checks its range.
                    self.visit_i64(v as i64)
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }

        /// The field's value, also when spelled with a zero fraction.
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            d.deserialize_any(Whole::<$ty>(std::marker::PhantomData))
        }

        /// The same for an optional field (`null` or absent is `None`; the field needs
        /// `#[serde(default)]` as well).
        pub fn $opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            struct Opt;
            impl<'de> Visitor<'de> for Opt {
                type Value = Option<$ty>;

                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    Whole::<$ty>(std::marker::PhantomData).expecting(f)?;
                    f.write_str(" or null")
                }

                fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }

                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }

                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    $name(d).map(Some)
                }
            }
            d.deserialize_option(Opt)
        }
    };
}

whole!(i64, i64, opt_i64);
whole!(u64, u64, opt_u64);

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Both {
        #[serde(deserialize_with = "super::i64")]
        n: i64,
        #[serde(default, deserialize_with = "super::opt_u64")]
        m: Option<u64>,
    }

    fn read(text: &str) -> Result<Both, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_zero_fraction_is_an_integer_and_nothing_else_is() {
        let both = read(r#"{"n": 3.0, "m": 2e3}"#).expect("whole numbers");
        assert_eq!((both.n, both.m), (3, Some(2000)));
        let both = read(r#"{"n": -7}"#).expect("no m");
        assert_eq!((both.n, both.m), (-7, None));
        assert_eq!(read(r#"{"n": 1, "m": null}"#).expect("null").m, None);
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": "3"}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": 9007199254740993.0}"#,
            r#"{"n": 9007199254740992.0}"#,
            r#"{"n": 9223372036854775808}"#,
            r#"{"n": 1, "m": -1}"#,
            r#"{"n": 1, "m": -1.0}"#,
            r#"{"n": 1, "m": 0.5}"#,
        ] {
            let err = read(bad).expect_err(bad);
            assert!(err.contains("an integer"), "{bad}: {err}");
        }
        assert_eq!(
            read(r#"{"n": 9223372036854775807}"#).expect("max").n,
            i64::MAX
        );
        assert_eq!(
            read(r#"{"n": 9007199254740991.0}"#).expect("2^53 - 1").n,
            9_007_199_254_740_991
        );
    }
}
