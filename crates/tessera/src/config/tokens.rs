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
    /// JWS algorithm of access tokens; unset: ES256 when id_tokens are RS256 (one RSA
    /// signature per refresh instead of two: nothing in the Kubernetes path verifies the access
    /// token), else the id_token's.
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
        None => default_access_token_alg(signing_alg),
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

/// The access token's algorithm when `tokens.access_token_alg` is unset. An RSA-2048 signature
/// costs about 470 µs of CPU, an ES256 one about 26 µs and an EdDSA one about 15 µs (aws-lc-rs,
/// this project's 2-core CI machine): with RS256 id_tokens, two RSA signatures were about 80% of
/// a refresh. kube-apiserver verifies only the id_token, so the access token takes ES256, which
/// more verifiers accept than EdDSA (kube-apiserver's own list among them), at a cost that
/// differs from EdDSA's by about 2% of a refresh.
fn default_access_token_alg(signing_alg: Algorithm) -> Algorithm {
    match signing_alg {
        Algorithm::RS256 => Algorithm::ES256,
        cheap @ (Algorithm::ES256 | Algorithm::EdDSA) => cheap,
    }
}

fn algorithm(key: &str, text: &str) -> Result<Algorithm, Invalid> {
    Algorithm::parse(text).ok_or_else(|| {
        (
            key.into(),
            format!("`{text}` is not one of RS256, ES256, EdDSA"),
        )
    })
}
