//! A transaction's lifecycle state: `buffered → forwarded → replicated`, or `→ dead`.
//!
//! Spelled in lowercase wherever it leaves Rust: the `state` field of the lifecycle hash
//! (written by the scripts), the API's `state`, `status` and `sync.state`. Rust compares
//! states only as [`TxState`], never as text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TxState {
    /// In the stream, not yet committed on the primary (`buffer.lua`, a dead-letter retry).
    Buffered,
    /// Committed on the primary, with its commit LSN; not yet replayed by the replica.
    Forwarded,
    /// Replayed by the read source: its overlay is released, the replica answers for it.
    Replicated,
    /// Rejected by the primary for good; in the dead-letter stream.
    Dead,
}

impl TxState {
    pub const ALL: [TxState; 4] = [
        TxState::Buffered,
        TxState::Forwarded,
        TxState::Replicated,
        TxState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Buffered => "buffered",
            TxState::Forwarded => "forwarded",
            TxState::Replicated => "replicated",
            TxState::Dead => "dead",
        }
    }
}

impl fmt::Display for TxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `state` that is none of [`TxState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transaction state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for TxState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TxState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Reads a lifecycle's `state` field; an unknown state is a parsing error, like any value
/// of the wrong type.
impl redis::FromRedisValue for TxState {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let text = String::from_redis_value(v)?;
        text.parse().map_err(|e: UnknownState| e.to_string().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_serde_and_display_agree() {
        for state in TxState::ALL {
            assert_eq!(state.as_str().parse::<TxState>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(serde_json::json!(state), serde_json::json!(state.as_str()));
            let back: TxState =
                serde_json::from_value(serde_json::json!(state.as_str())).expect("a state");
            assert_eq!(back, state);
        }
    }

    #[test]
    fn unknown_and_differently_cased_states_are_refused() {
        assert_eq!(
            "Buffered".parse::<TxState>(),
            Err(UnknownState("Buffered".into()))
        );
        assert!("".parse::<TxState>().is_err());
    }

    #[test]
    fn reads_from_redis_values() {
        use redis::FromRedisValue;
        let v = redis::Value::BulkString(b"forwarded".to_vec());
        assert_eq!(TxState::from_redis_value(v).ok(), Some(TxState::Forwarded));
        let nil: Option<TxState> =
            FromRedisValue::from_redis_value(redis::Value::Nil).expect("nil is none");
        assert_eq!(nil, None);
        let bad = redis::Value::BulkString(b"lost".to_vec());
        assert!(TxState::from_redis_value(bad).is_err());
    }
}
