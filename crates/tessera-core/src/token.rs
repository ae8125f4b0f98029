//! Opaque secrets: refresh tokens, authorization codes, SSO handles. Only their SHA-256
//! ([`TokenHash`]) is ever stored; the secret itself exists in memory and on the wire alone.
//!
//! A refresh token is `tsr1_` + base64url(32 bytes). Its successor is derived, not random:
//! `T' = tsr1_ + base64url(HMAC-SHA256(rotation_key, T))`, so every redemption of `T` inside the
//! grace period can answer the same `T'` although the store keeps only `T'`'s hash.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every refresh token, so leaked ones are easy to recognise (secret scanners).
pub const REFRESH_TOKEN_PREFIX: &str = "tsr1_";

/// Longest token text tessera will even hash; anything longer is garbage by construction.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A secret value sent to clients and never stored: a refresh token, a code, a cookie handle.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new secret of `prefix` followed by the base64url form of 32 random bytes.
    pub fn from_random(prefix: &str, random: [u8; 32]) -> Secret {
        Secret(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random)))
    }

    /// Wraps text received from a client. Nothing is checked: unknown text simply hashes to
    /// nothing the store knows.
    pub fn from_presented(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret's text, to send to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the secret, the only form that is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The refresh token that succeeds this one: HMAC-SHA256 under the rotation key, so a second
    /// redemption inside the grace period derives the same successor without storing it.
    pub fn successor(&self, rotation_key: &RotationKey) -> Secret {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&rotation_key.0) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(self.0.as_bytes());
        let tag = mac.finalize().into_bytes();
        Secret(format!(
            "{REFRESH_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// Compares with another secret in constant time.
    pub fn matches(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.hash().token_id())
    }
}

/// The SHA-256 of a [`Secret`]: the key under which the store keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The first 16 hex digits: enough to correlate audit events, useless to replay.
    pub fn token_id(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// The full hash in lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form written by [`TokenHash::to_hex`].
    pub fn from_hex(text: &str) -> Option<TokenHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.token_id())
    }
}

/// The server-wide key from which refresh-token successors are derived.
#[derive(Clone)]
pub struct RotationKey(Vec<u8>);

impl RotationKey {
    /// Wraps key bytes (32 random bytes, kept in the store so every replica derives alike).
    pub fn new(bytes: Vec<u8>) -> RotationKey {
        RotationKey(bytes)
    }
}

impl fmt::Debug for RotationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RotationKey(redacted)")
    }
}

/// Compares two byte strings in constant time (client secrets, CSRF tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_carry_the_prefix_and_43_characters_of_randomness() {
        let token = Secret::from_random(REFRESH_TOKEN_PREFIX, [7; 32]);
        assert!(token.expose().starts_with("tsr1_"));
        assert_eq!(token.expose().len(), 5 + 43);
    }

    #[test]
    fn successor_is_deterministic_per_key_and_token() {
        let key = RotationKey::new(vec![1; 32]);
        let t = Secret::from_random(REFRESH_TOKEN_PREFIX, [9; 32]);
        assert_eq!(t.successor(&key), t.successor(&key));
        assert_ne!(
            t.successor(&key),
            t.successor(&RotationKey::new(vec![2; 32]))
        );
        assert_ne!(t.successor(&key), t);
        assert!(t.successor(&key).expose().starts_with(REFRESH_TOKEN_PREFIX));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = Secret::from_random(REFRESH_TOKEN_PREFIX, [3; 32]);
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.expose()[5..]));
        assert!(shown.contains(&token.hash().token_id()));
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let hash = Secret::from_presented("x").hash();
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert_eq!(hash.token_id().len(), 16);
    }
}
