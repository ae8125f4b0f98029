//! The id_token as a relying party reads it: verified against the issuer's keys (signature
//! under a public-key algorithm the key allows, issuer, audience, expiry, and the nonce of the
//! login or the subject of the session, OpenID Connect Core §3.1.3.7 and §12.2), or, where the
//! token came straight from the token endpoint over TLS, only read.
//!
//! The algorithm is never the token's choice alone: `alg: none` is no algorithm, an HMAC would
//! make the client secret (or a public key's bytes) a signing key, and a header naming another
//! algorithm than its key's (or, for a key without `alg`, one its type cannot verify) is
//! refused.

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tessera_core::token::constant_time_eq;

use crate::error::{Check, Error, Rejection};

/// The claims of an id_token that tessera's relying parties read.
#[derive(Clone, Debug, Deserialize)]
pub struct IdClaims {
    /// Subject.
    pub sub: String,
    /// Issued at, seconds.
    pub iat: i64,
    /// Expiry, seconds.
    pub exp: i64,
    /// The login name, when the provider sends one.
    #[serde(default)]
    pub preferred_username: Option<String>,
    /// The nonce of the authorization request.
    #[serde(default)]
    pub nonce: Option<String>,
    /// Every other claim (`email`, `groups`, a provider's own), for a caller that maps claims
    /// to a user: providers name groups and user names each their own way.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl IdClaims {
    /// The name a human knows the account by.
    pub fn username(&self) -> &str {
        self.preferred_username.as_deref().unwrap_or(&self.sub)
    }
}

/// What an id_token must carry besides the issuer's signature, issuer, audience and expiry.
#[derive(Clone, Copy, Debug)]
pub enum Expected<'a> {
    /// After a login: the nonce of its authorization request (OpenID Connect Core §3.1.3.7).
    Nonce(&'a str),
    /// After a refresh: the subject of the session it renews (OpenID Connect Core §12.2).
    Subject(&'a str),
}

impl Expected<'_> {
    fn check(self, claims: &IdClaims) -> Result<(), Rejection> {
        let matches = |found: Option<&str>, wanted: &str| {
            found.is_some_and(|f| constant_time_eq(f.as_bytes(), wanted.as_bytes()))
        };
        match self {
            Expected::Nonce(nonce) if !matches(claims.nonce.as_deref(), nonce) => {
                Err(Rejection::NonceMismatch)
            }
            Expected::Subject(sub) if !matches(Some(&claims.sub), sub) => {
                Err(Rejection::SubjectMismatch {
                    found: claims.sub.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Who an id_token must come from and be for.
#[derive(Clone, Copy, Debug)]
pub struct Verification<'a> {
    /// The issuer, exactly as its discovery document states it.
    pub issuer: &'a str,
    /// Our client id: the audience.
    pub client_id: &'a str,
    /// The nonce or the subject.
    pub expected: Expected<'a>,
}

/// Signature algorithms an id_token may use (RFC 7518 §3.1): public-key ones only, never
/// `none` nor an HMAC, whose key would be the client secret.
const SIGNATURE_ALGORITHMS: [Algorithm; 9] = {
    use Algorithm::{ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512};
    [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ]
};

impl Verification<'_> {
    /// Verifies `id_token` against keys already fetched: its signature with the key its `kid`
    /// names, under an algorithm that key allows, then its issuer, audience, expiry and what
    /// `expected` asks. [`Error::UnknownKey`] says the keys may be stale.
    pub fn verify(&self, keys: &JwkSet, id_token: &str) -> Result<IdClaims, Error> {
        let header = jsonwebtoken::decode_header(id_token).map_err(|e| Rejection::Malformed {
            reason: e.to_string(),
        })?;
        let kid = header.kid.ok_or(Rejection::NoKeyId)?;
        let Some(jwk) = keys.find(&kid) else {
            return Err(Error::UnknownKey { kid });
        };
        let alg = algorithm_for(&kid, jwk, header.alg)?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| Rejection::UnusableKey {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_issuer(&[self.issuer]);
        validation.set_audience(&[self.client_id]);
        let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
            .map_err(|e| Rejection::DoesNotVerify {
                check: Check::of(e.kind()),
                reason: e.to_string(),
            })?
            .claims;
        self.expected.check(&claims)?;
        Ok(claims)
    }
}

/// The algorithm to verify a token whose header says `token` with `key`. A key that names its
/// `alg` allows that one, if it is a public-key signature algorithm; a key that names none
/// (RFC 7517 §4.4 makes `alg` optional, and Okta, Entra ID and Keycloak leave it out) allows
/// what its type and curve can verify. Either way the header only chooses among what the key
/// allows, and a key meant for encryption verifies nothing (RFC 7517 §4.2).
fn algorithm_for(kid: &str, key: &Jwk, token: Algorithm) -> Result<Algorithm, Rejection> {
    let usable = key.common.public_key_use.as_ref();
    if usable.is_some_and(|u| *u != PublicKeyUse::Signature) {
        return Err(Rejection::KeyNotForSignatures {
            kid: kid.to_owned(),
        });
    }
    let Some(named) = key.common.key_algorithm else {
        if fits(key, token) {
            return Ok(token);
        }
        return Err(Rejection::KeyTypeMismatch {
            token,
            kid: kid.to_owned(),
        });
    };
    let alg = named
        .to_string()
        .parse()
        .ok()
        .filter(|alg| SIGNATURE_ALGORITHMS.contains(alg))
        .ok_or_else(|| Rejection::KeyAlgorithmNotAllowed {
            kid: kid.to_owned(),
        })?;
    if token != alg {
        return Err(Rejection::AlgorithmMismatch { token, key: alg });
    }
    Ok(alg)
}

/// Whether a key of `key`'s type and curve verifies `alg` (RFC 7518 §3.3–3.5, RFC 8037 §3.1).
/// HMACs and `none` fit no key: an `oct` key would make a shared secret a signing key.
fn fits(key: &Jwk, alg: Algorithm) -> bool {
    use Algorithm::{ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512};
    match (&key.algorithm, alg) {
        (AlgorithmParameters::RSA(_), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => true,
        (AlgorithmParameters::EllipticCurve(ec), ES256) => ec.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(ec), ES384) => ec.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(okp), EdDSA) => okp.curve == EllipticCurve::Ed25519,
        _ => false,
    }
}

impl From<Rejection> for Error {
    fn from(rejection: Rejection) -> Error {
        Error::Rejected(rejection)
    }
}

/// Reads the claims of an id_token WITHOUT verifying it. Only for a token that came straight
/// from the token endpoint over TLS (OpenID Connect Core §3.1.3.7 allows skipping the
/// signature check then), or that this process verified or sealed itself.
pub fn read_unverified_claims<T: DeserializeOwned>(id_token: &str) -> Result<T, Error> {
    let payload = id_token.split('.').nth(1).ok_or(Error::NotAJwt)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| Error::PayloadNotBase64 {
            reason: e.to_string(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::MissingClaim {
        reason: e.to_string(),
    })
}
