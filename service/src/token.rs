//! API tokens: random bearer secrets, of which only the SHA-256 is configured.

use sha2::{Digest, Sha256};

/// A new token: `opsdb_` and 32 random bytes in hex.
pub fn generate() -> String {
    format!("opsdb_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What goes into `auth.tokens[].sha256`.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
