//! JSON as hostile text: what `serde_json::Value` cannot hold, and changes to it.

use proptest::sample::Index;
use serde_json::Value;

/// JSON as text can be written, not only as `serde_json::Value` holds it: a scalar is raw
/// text (perhaps not JSON at all: `NaN`, `1e400`, a string with a raw control character),
/// and an object keeps its order and may repeat a key.
#[derive(Debug, Clone)]
pub enum Json {
    Raw(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn from_value(v: &Value) -> Self {
        match v {
            Value::Array(items) => Self::Array(items.iter().map(Self::from_value).collect()),
            Value::Object(fields) => Self::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Self::from_value(v)))
                    .collect(),
            ),
            scalar => Self::Raw(scalar.to_string()),
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Raw(raw) => out.push_str(raw),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(key.as_str()).to_string());
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    pub(super) fn string(s: &str) -> Self {
        Self::Raw(Value::from(s).to_string())
    }
}

/// Bytes that read as text in a failure's minimal input (`b"{\"op\": ..."`), not as a
/// list of numbers.
#[derive(Clone)]
pub struct Shown(pub Vec<u8>);

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// One change to a body (or a TCP envelope).
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Remove a field (of an object) or an element (of an array).
    Drop(Index),
    /// Give a field or element another value, often of another type.
    Replace(Index, Json),
    /// The field once more with another value (a duplicate key), or an element twice.
    Repeat(Index, Json),
    /// A further field (an unknown one, or one of another operation) or element.
    Add(String, Json),
    /// The mutation applied inside a field's or element's value.
    Inside(Index, Box<Mutation>),
}

impl Mutation {
    pub fn apply(&self, target: &mut Json) {
        match (target, self) {
            (Json::Object(fields), m) if !fields.is_empty() || matches!(m, Self::Add(..)) => {
                match m {
                    Self::Drop(i) => drop(fields.remove(i.index(fields.len()))),
                    Self::Replace(i, v) => {
                        let at = i.index(fields.len());
                        fields[at].1 = v.clone();
                    }
                    Self::Repeat(i, v) => {
                        let key = fields[i.index(fields.len())].0.clone();
                        fields.push((key, v.clone()));
                    }
                    Self::Add(key, v) => fields.push((key.clone(), v.clone())),
                    Self::Inside(i, m) => {
                        let at = i.index(fields.len());
                        m.apply(&mut fields[at].1);
                    }
                }
            }
            (Json::Array(items), m) if !items.is_empty() || matches!(m, Self::Add(..)) => match m {
                Self::Drop(i) => drop(items.remove(i.index(items.len()))),
                Self::Replace(i, v) => {
                    let at = i.index(items.len());
                    items[at] = v.clone();
                }
                Self::Repeat(i, _) => items.push(items[i.index(items.len())].clone()),
                Self::Add(_, v) => items.push(v.clone()),
                Self::Inside(i, m) => {
                    let at = i.index(items.len());
                    m.apply(&mut items[at]);
                }
            },
            (target, Self::Replace(_, v) | Self::Repeat(_, v) | Self::Add(_, v)) => {
                *target = v.clone();
            }
            _ => {}
        }
    }
}
