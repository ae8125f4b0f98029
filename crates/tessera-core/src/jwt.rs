//! JSON Web Tokens: signing with cached key pairs, JWKS, and verification that pins each key to
//! its algorithm (no `alg: none`, no RSA/HMAC key confusion).
//!
//! Signing keeps the parsed key pair: re-parsing a PKCS#8 RSA key on every call (what
//! `jsonwebtoken::encode` does) costs two thirds of a refresh's CPU.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A JWS signing algorithm tessera offers (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 over a 2048-bit key: what kube-apiserver accepts by default.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// The JOSE name of the algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE name.
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "RS256" => Some(Algorithm::RS256),
            "ES256" => Some(Algorithm::ES256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }

    fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// Failures of key handling and token verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Key generation failed inside the crypto library.
    #[error("could not generate a {alg:?} key")]
    KeyGeneration {
        /// The algorithm asked for.
        alg: Algorithm,
    },
    /// Stored key material did not parse.
    #[error("the stored {alg:?} key {kid} is not a valid PKCS#8 key")]
    KeyRejected {
        /// The algorithm of the key.
        alg: Algorithm,
        /// The key id.
        kid: String,
    },
    /// Signing failed inside the crypto library.
    #[error("signing failed")]
    Signing,
    /// The token is not a well-formed JWS, names no known key, or its signature is wrong.
    #[error("the token is malformed or its signature does not verify")]
    BadToken,
    /// The token verified but has expired.
    #[error("the token has expired")]
    Expired,
    /// The token verified but its claims (issuer, audience, type) do not fit.
    #[error("the token's claims do not fit")]
    WrongClaims,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private signing key, parsed once and kept for every signature.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pair: Pair,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, {:?})", self.kid, self.alg)
    }
}

impl SigningKey {
    /// Generates a new key and returns it with its PKCS#8 document for storage.
    pub fn generate(alg: Algorithm, kid: String) -> Result<(SigningKey, Vec<u8>), JwtError> {
        let failed = || JwtError::KeyGeneration { alg };
        let pkcs8 = match alg {
            Algorithm::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|k| k.as_der())
                .map(|d| d.as_ref().to_vec()),
            Algorithm::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec()),
            Algorithm::EdDSA => Ed25519KeyPair::generate()
                .and_then(|k| AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&k))
                .map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| failed())?;
        let key = SigningKey::from_pkcs8(alg, kid, &pkcs8)?;
        Ok((key, pkcs8))
    }

    /// Parses a stored PKCS#8 key.
    pub fn from_pkcs8(alg: Algorithm, kid: String, der: &[u8]) -> Result<SigningKey, JwtError> {
        let rejected = || JwtError::KeyRejected {
            alg,
            kid: kid.clone(),
        };
        let pair = match alg {
            Algorithm::RS256 => Pair::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|_| rejected())?),
            Algorithm::ES256 => Pair::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| rejected())?,
            ),
            Algorithm::EdDSA => {
                Pair::Ed25519(Ed25519KeyPair::from_pkcs8(der).map_err(|_| rejected())?)
            }
        };
        Ok(SigningKey {
            kid,
            alg,
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Signs `claims` as a compact JWS with header `{alg, kid, typ}`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, JwtError> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": typ});
        let header = serde_json::to_vec(&header).map_err(|_| JwtError::Signing)?;
        let payload = serde_json::to_vec(claims).map_err(|_| JwtError::Signing)?;
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let signature = self.signature(jws.as_bytes())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
        Ok(jws)
    }

    /// The public half as a JWK (RFC 7517 §4) with `use: sig`, `alg` and `kid`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.pair {
            Pair::Rsa(k) => {
                let public = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Pair::Ecdsa(k) => {
                // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = k.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(point.len().saturating_sub(1) / 2);
                json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)})
            }
            Pair::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        };
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(self.alg.as_str());
        jwk["kid"] = json!(self.kid);
        jwk
    }

    fn signature(&self, message: &[u8]) -> Result<Vec<u8>, JwtError> {
        match &self.pair {
            Pair::Rsa(k) => {
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut out)
                    .map_err(|_| JwtError::Signing)?;
                Ok(out)
            }
            Pair::Ecdsa(k) => k
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwtError::Signing),
            Pair::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

/// Public keys by `kid`, each pinned to its own algorithm.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: Vec<(String, Algorithm, DecodingKey)>,
}

/// What a verification demands of the claims.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    /// The required `iss`.
    pub issuer: &'a str,
    /// The required `aud`, when the caller knows it.
    pub audience: Option<&'a str>,
    /// Whether an expired token is still accepted (an `id_token_hint` may be expired).
    pub allow_expired: bool,
    /// The current time, in seconds since the epoch.
    pub now_secs: i64,
}

impl Verifier {
    /// Adds the public half of a signing key.
    pub fn add(&mut self, key: &SigningKey) -> Result<(), JwtError> {
        let jwk = key.public_jwk();
        let s = |name: &str| jwk[name].as_str().unwrap_or_default().to_owned();
        let decoding = match key.alg {
            Algorithm::RS256 => DecodingKey::from_rsa_components(&s("n"), &s("e")),
            Algorithm::ES256 => DecodingKey::from_ec_components(&s("x"), &s("y")),
            Algorithm::EdDSA => DecodingKey::from_ed_components(&s("x")),
        }
        .map_err(|_| JwtError::KeyRejected {
            alg: key.alg,
            kid: key.kid.clone(),
        })?;
        self.keys.push((key.kid.clone(), key.alg, decoding));
        Ok(())
    }

    /// Verifies a compact JWS and returns its claims.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        expect: &Expect<'_>,
    ) -> Result<T, JwtError> {
        if token.len() > 16 * 1024 {
            return Err(JwtError::BadToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::BadToken)?;
        let kid = header.kid.ok_or(JwtError::BadToken)?;
        let (_, alg, key) = self
            .keys
            .iter()
            .find(|(k, _, _)| *k == kid)
            .ok_or(JwtError::BadToken)?;
        // The key decides the algorithm; the header's `alg` must merely agree.
        if header.alg != alg.jsonwebtoken() {
            return Err(JwtError::BadToken);
        }
        let mut validation = Validation::new(alg.jsonwebtoken());
        validation.set_issuer(&[expect.issuer]);
        match expect.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidIssuer
                | jsonwebtoken::errors::ErrorKind::InvalidAudience
                | jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => JwtError::WrongClaims,
                _ => JwtError::BadToken,
            },
        )?;
        let exp = data.claims["exp"].as_i64().ok_or(JwtError::WrongClaims)?;
        if !expect.allow_expired && expect.now_secs >= exp {
            return Err(JwtError::Expired);
        }
        serde_json::from_value(data.claims).map_err(|_| JwtError::WrongClaims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn expect(now_secs: i64) -> Expect<'static> {
        Expect {
            issuer: "https://issuer",
            audience: Some("kubernetes"),
            allow_expired: false,
            now_secs,
        }
    }

    fn round_trip(alg: Algorithm) {
        let (key, pkcs8) = SigningKey::generate(alg, "k1".into()).unwrap();
        let reloaded = SigningKey::from_pkcs8(alg, "k1".into(), &pkcs8).unwrap();
        let mut verifier = Verifier::default();
        verifier.add(&reloaded).unwrap();
        let claims =
            json!({"iss": "https://issuer", "aud": "kubernetes", "exp": 1000, "sub": "dev"});
        let token = key.sign("JWT", &claims).unwrap();
        let back: serde_json::Value = verifier.verify(&token, &expect(999)).unwrap();
        assert_eq!(back["sub"], "dev");
        assert_eq!(
            verifier.verify::<serde_json::Value>(&token, &expect(1000)),
            Err(JwtError::Expired)
        );
        let wrong_aud = Expect {
            audience: Some("demo"),
            ..expect(0)
        };
        assert_eq!(
            verifier.verify::<serde_json::Value>(&token, &wrong_aud),
            Err(JwtError::WrongClaims)
        );
    }

    #[test]
    fn every_algorithm_signs_what_its_jwk_verifies() {
        round_trip(Algorithm::RS256);
        round_trip(Algorithm::ES256);
        round_trip(Algorithm::EdDSA);
    }

    #[test]
    fn alg_none_and_tampered_tokens_are_refused() {
        let (key, _) = SigningKey::generate(Algorithm::ES256, "k1".into()).unwrap();
        let mut verifier = Verifier::default();
        verifier.add(&key).unwrap();
        let claims = json!({"iss": "https://issuer", "aud": "kubernetes", "exp": 10});
        let token = key.sign("JWT", &claims).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let unsigned = format!("{none}.{}.", parts[1]);
        assert_eq!(
            verifier.verify::<serde_json::Value>(&unsigned, &expect(0)),
            Err(JwtError::BadToken)
        );
        let other =
            URL_SAFE_NO_PAD.encode(br#"{"iss":"https://issuer","aud":"kubernetes","exp":99}"#);
        let tampered = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(
            verifier.verify::<serde_json::Value>(&tampered, &expect(0)),
            Err(JwtError::BadToken)
        );
        assert_eq!(
            verifier.verify::<serde_json::Value>("garbage", &expect(0)),
            Err(JwtError::BadToken)
        );
    }

    #[test]
    fn a_header_naming_another_algorithm_than_its_key_is_refused() {
        let (rsa, _) = SigningKey::generate(Algorithm::RS256, "rsa".into()).unwrap();
        let mut verifier = Verifier::default();
        verifier.add(&rsa).unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"rsa"}"#);
        let body = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://issuer","exp":99}"#);
        let forged = format!("{header}.{body}.AAAA");
        assert_eq!(
            verifier.verify::<serde_json::Value>(&forged, &expect(0)),
            Err(JwtError::BadToken)
        );
    }
}
