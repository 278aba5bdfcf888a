//! A TCP line's idempotency key: the `idempotency_key` given, else the `request_id`.

use ops_db_actors::domain::IdempotencyKey;
use serde_json::Value;

use super::Envelope;

impl Envelope {
    /// The write's idempotency key: `idempotency_key` if given, else the `request_id` as
    /// text (a string as it is, a number as written) if that is a valid key, so that a
    /// line resent after a lost reply gets the first answer. A `request_id` that is not a
    /// valid key (an object, a long or spaced string) is no key, never an error: it has
    /// always been free-form.
    pub(crate) fn idempotency_key(&self) -> LineKey<'_> {
        if let Some(key) = &self.idempotency_key {
            return LineKey::Given(key);
        }
        let text = match &self.request_id {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return LineKey::None,
        };
        match IdempotencyKey::parse(&text) {
            Ok(_) => LineKey::RequestId(text),
            Err(_) => LineKey::None,
        }
    }
}

/// Where a line's idempotency key comes from ([`Envelope::idempotency_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineKey<'a> {
    None,
    /// `idempotency_key`, as sent (checked like an `Idempotency-Key` header).
    Given(&'a str),
    /// The `request_id` as text, a valid key.
    RequestId(String),
}

impl LineKey<'_> {
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::None => None,
            Self::Given(key) => Some(key.as_bytes()),
            Self::RequestId(key) => Some(key.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of a line with `extra` members, owned: `(source, key)`.
    fn key_of(extra: Value) -> Option<(&'static str, String)> {
        let mut line = serde_json::json!({"op": "executed_obs_units.start"});
        if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        let envelope: Envelope = serde_json::from_value(line).ok()?;
        match envelope.idempotency_key() {
            LineKey::None => None,
            LineKey::Given(k) => Some(("given", k.to_owned())),
            LineKey::RequestId(k) => Some(("request_id", k)),
        }
    }

    #[test]
    fn a_request_id_is_the_key_when_none_is_given() {
        use serde_json::json;
        assert_eq!(
            key_of(json!({"request_id": 7})),
            Some(("request_id", "7".into()))
        );
        assert_eq!(
            key_of(json!({"request_id": "job-7"})),
            Some(("request_id", "job-7".into()))
        );
        assert_eq!(
            key_of(json!({"request_id": 7, "idempotency_key": "k"})),
            Some(("given", "k".into()))
        );
        // Ids that are no valid key are no key, never an error.
        for id in [
            json!({"a": 1}),
            json!([1]),
            json!(null),
            json!(true),
            json!(""),
            json!("has space"),
            json!("k".repeat(256)),
            json!("ü"),
        ] {
            assert_eq!(key_of(json!({ "request_id": id })), None, "{id}");
        }
        assert_eq!(key_of(json!({})), None);
    }
}
