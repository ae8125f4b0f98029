//! The `tokens:` section: lifetimes and signing algorithms of id_tokens and access tokens.

use std::time::Duration;

use serde::Deserialize;
use tessera_core::jwt::Algorithm;

use super::{Invalid, duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTokens {
    /// Lifetime of id_tokens.
    id_token_ttl: String,
    /// Lifetime of access tokens.
    access_token_ttl: String,
    /// JWS algorithm of id_tokens: RS256, ES256 or EdDSA.
    signing_alg: String,
    /// JWS algorithm of access tokens; unset: the id_token's.
    access_token_alg: Option<String>,
}

impl Default for RawTokens {
    fn default() -> Self {
        RawTokens {
            id_token_ttl: "60s".into(),
            access_token_ttl: "60s".into(),
            signing_alg: "RS256".into(),
            access_token_alg: None,
        }
    }
}

/// The validated `tokens:` section.
pub(super) struct Tokens {
    pub(super) id_token_ttl: Duration,
    pub(super) access_token_ttl: Duration,
    pub(super) signing_alg: Algorithm,
    pub(super) access_token_alg: Algorithm,
}

pub(super) fn validate(raw: &RawTokens) -> Result<Tokens, Invalid> {
    let signing_alg = algorithm("tokens.signing_alg", &raw.signing_alg)?;
    let access_token_alg = match &raw.access_token_alg {
        Some(a) => algorithm("tokens.access_token_alg", a)?,
        None => signing_alg,
    };
    let id_token_ttl = duration("tokens.id_token_ttl", &raw.id_token_ttl)?;
    let access_token_ttl = duration("tokens.access_token_ttl", &raw.access_token_ttl)?;
    if id_token_ttl < Duration::from_secs(1) || access_token_ttl < Duration::from_secs(1) {
        return Err((
            "tokens".into(),
            "token lifetimes must be at least 1s (JWT times are whole seconds)".into(),
        ));
    }
    Ok(Tokens {
        id_token_ttl,
        access_token_ttl,
        signing_alg,
        access_token_alg,
    })
}

fn algorithm(key: &str, text: &str) -> Result<Algorithm, Invalid> {
    Algorithm::parse(text).ok_or_else(|| {
        (
            key.into(),
            format!("`{text}` is not one of RS256, ES256, EdDSA"),
        )
    })
}
