//! The verification table: every way an id_token is accepted or refused, with keys generated
//! at test time. No I/O: the keys are given, as a relying party holds them once fetched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::jwt::{Algorithm as SigningAlgorithm, SigningKey};
use tessera_oidc::{
    Check, Error, Expected, IdClaims, JwkSet, Rejection, Verification, read_unverified_claims,
};

const ISSUER: &str = "https://idp.example";
const CLIENT: &str = "kubernetes";
const NONCE: &str = "nonce-of-this-login";

/// One key of each type the provider side signs with.
struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let key = |alg, kid: &str| SigningKey::generate(alg, kid.into()).unwrap().0;
    Keys {
        rsa: key(SigningAlgorithm::RS256, "rsa"),
        ec: key(SigningAlgorithm::ES256, "ec"),
        ed: key(SigningAlgorithm::EdDSA, "ed"),
    }
});

/// A JWKS of `keys` (public JWKs, as JSON).
fn jwks(keys: &[Value]) -> JwkSet {
    serde_json::from_value(json!({ "keys": keys })).unwrap()
}

/// The provider's JWKS as tessera publishes it: every key with its `alg`.
fn published() -> JwkSet {
    jwks(&[
        KEYS.rsa.public_jwk(),
        KEYS.ec.public_jwk(),
        KEYS.ed.public_jwk(),
    ])
}

fn now() -> i64 {
    SystemClock.now().0 / 1000
}

/// Good claims for this client and login, with `changes` applied.
#[allow(clippy::needless_pass_by_value)] // a `json!` literal reads best at the call
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": CLIENT, "sub": "alice", "preferred_username": "alice@example",
        "iat": now(), "exp": now() + 60, "nonce": NONCE, "groups": ["ops"],
    });
    for (name, value) in changes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

fn signed(key: &SigningKey, claims: &Value) -> String {
    key.sign("JWT", claims).unwrap()
}

/// A token with any header at all, and a signature that is not one.
fn forged(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!(
        "{}.{}.{}",
        part(header),
        part(claims),
        URL_SAFE_NO_PAD.encode(b"forged")
    )
}

/// `key`'s signature over a token whose header names `kid` instead of the key's own.
fn signed_as(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let token = signed(key, claims);
    let (header, rest) = token.split_once('.').unwrap();
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"] = kid.into();
    // The signature no longer covers the header; what is tested is that the algorithm is
    // refused before any signature is checked.
    format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap())
    )
}

fn verify(keys: &JwkSet, token: &str, expected: Expected<'_>) -> Result<IdClaims, Error> {
    Verification {
        issuer: ISSUER,
        client_id: CLIENT,
        expected,
    }
    .verify(keys, token)
}

/// What a row of the table expects.
#[derive(Debug)]
enum Want {
    Accepted,
    UnknownKey,
    Malformed,
    Rejected(Rejection),
    Fails(Check),
}

fn assert_row(name: &str, result: &Result<IdClaims, Error>, want: &Want) {
    let ok = match (result, want) {
        (Ok(claims), Want::Accepted) => claims.sub == "alice",
        (Err(Error::UnknownKey { .. }), Want::UnknownKey)
        | (Err(Error::Rejected(Rejection::Malformed { .. })), Want::Malformed) => true,
        (Err(Error::Rejected(Rejection::DoesNotVerify { check, .. })), Want::Fails(want)) => {
            check == want
        }
        (Err(Error::Rejected(found)), Want::Rejected(want)) => found == want,
        _ => false,
    };
    assert!(ok, "{name}: wanted {want:?}, got {result:?}");
}

#[test]
fn verification_table() {
    let keys = published();
    let nonce = Expected::Nonce(NONCE);
    let good = claims(json!({}));
    let rows: Vec<(&str, String, Expected<'_>, Want)> = vec![
        (
            "good RS256",
            signed(&KEYS.rsa, &good),
            nonce,
            Want::Accepted,
        ),
        ("good ES256", signed(&KEYS.ec, &good), nonce, Want::Accepted),
        ("good EdDSA", signed(&KEYS.ed, &good), nonce, Want::Accepted),
        (
            "good after a refresh",
            signed(&KEYS.rsa, &claims(json!({"nonce": null}))),
            Expected::Subject("alice"),
            Want::Accepted,
        ),
        (
            "wrong issuer",
            signed(&KEYS.rsa, &claims(json!({"iss": "https://evil.example"}))),
            nonce,
            Want::Fails(Check::Issuer),
        ),
        (
            "wrong audience",
            signed(&KEYS.rsa, &claims(json!({"aud": "another-client"}))),
            nonce,
            Want::Fails(Check::Audience),
        ),
        (
            "wrong nonce",
            signed(&KEYS.rsa, &claims(json!({"nonce": "another login"}))),
            nonce,
            Want::Rejected(Rejection::NonceMismatch),
        ),
        (
            "no nonce after a login",
            signed(&KEYS.rsa, &claims(json!({"nonce": null}))),
            nonce,
            Want::Rejected(Rejection::NonceMismatch),
        ),
        (
            "another subject after a refresh",
            signed(&KEYS.rsa, &good),
            Expected::Subject("bob"),
            Want::Rejected(Rejection::SubjectMismatch {
                found: "alice".into(),
            }),
        ),
        (
            "expired (past the verifier's 60 s leeway)",
            signed(
                &KEYS.rsa,
                &claims(json!({"iat": now() - 3600, "exp": now() - 600})),
            ),
            nonce,
            Want::Fails(Check::Lifetime),
        ),
        (
            "tampered payload",
            {
                let token = signed(&KEYS.rsa, &good);
                let evil = signed(&KEYS.rsa, &claims(json!({"sub": "mallory"})));
                let mut parts: Vec<&str> = token.split('.').collect();
                parts[1] = evil.split('.').nth(1).unwrap();
                parts.join(".")
            },
            nonce,
            Want::Fails(Check::Signature),
        ),
        (
            "unknown kid",
            signed(
                &SigningKey::generate(SigningAlgorithm::RS256, "rotated".into())
                    .unwrap()
                    .0,
                &good,
            ),
            nonce,
            Want::UnknownKey,
        ),
        (
            "no kid",
            forged(&json!({"alg": "RS256"}), &good),
            nonce,
            Want::Rejected(Rejection::NoKeyId),
        ),
        (
            "alg none",
            forged(&json!({"alg": "none", "kid": "rsa"}), &good),
            nonce,
            Want::Malformed,
        ),
        (
            "HS256 over the RSA key (key confusion)",
            forged(&json!({"alg": "HS256", "kid": "rsa"}), &good),
            nonce,
            Want::Rejected(Rejection::AlgorithmMismatch {
                token: Algorithm::HS256,
                key: Algorithm::RS256,
            }),
        ),
        (
            "key of another type: an EC signature naming the RSA key",
            signed_as(&KEYS.ec, "rsa", &good),
            nonce,
            Want::Rejected(Rejection::AlgorithmMismatch {
                token: Algorithm::ES256,
                key: Algorithm::RS256,
            }),
        ),
    ];
    for (name, token, expected, want) in &rows {
        assert_row(name, &verify(&keys, token, *expected), want);
    }
}

#[test]
fn a_key_naming_an_encryption_algorithm_verifies_nothing() {
    let mut jwk = KEYS.rsa.public_jwk();
    jwk["alg"] = "RSA-OAEP".into();
    let token = signed(&KEYS.rsa, &claims(json!({})));
    assert_row(
        "RSA-OAEP key",
        &verify(&jwks(&[jwk]), &token, Expected::Nonce(NONCE)),
        &Want::Rejected(Rejection::KeyAlgorithmNotAllowed { kid: "rsa".into() }),
    );
}

#[test]
fn the_claims_a_caller_maps_to_a_user_are_all_there() {
    let token = signed(&KEYS.ec, &claims(json!({"email": "alice@example.org"})));
    let claims = verify(&published(), &token, Expected::Nonce(NONCE)).unwrap();
    assert_eq!(claims.username(), "alice@example");
    assert_eq!(claims.other["groups"], json!(["ops"]));
    assert_eq!(claims.other["email"], "alice@example.org");
}

#[test]
fn unverified_claims_are_read_or_the_token_is_named_malformed() {
    let token = signed(&KEYS.rsa, &claims(json!({})));
    let claims: IdClaims = read_unverified_claims(&token).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(
        read_unverified_claims::<IdClaims>("no-dots").unwrap_err(),
        Error::NotAJwt
    );
    assert!(matches!(
        read_unverified_claims::<IdClaims>("a.!!!.c"),
        Err(Error::PayloadNotBase64 { .. })
    ));
    let no_sub = forged(&json!({"alg": "RS256"}), &json!({"iat": 1, "exp": 2}));
    assert!(matches!(
        read_unverified_claims::<IdClaims>(&no_sub),
        Err(Error::MissingClaim { .. })
    ));
}

/// A key's JWK without some of its members.
fn jwk_without(key: &SigningKey, members: &[&str]) -> Value {
    let mut jwk = key.public_jwk();
    for member in members {
        jwk.as_object_mut().unwrap().remove(*member);
    }
    jwk
}

/// RFC 7517 §4.4: `alg` is optional in a JWK, and Okta, Entra ID and Keycloak leave it out. Such
/// a key verifies the algorithms its type and curve can, and only those: the token's header
/// never picks an algorithm of another key type.
#[test]
fn a_key_without_alg_verifies_what_its_type_allows_and_nothing_else() {
    let keys = jwks(&[
        jwk_without(&KEYS.rsa, &["alg"]),
        jwk_without(&KEYS.ec, &["alg"]),
        jwk_without(&KEYS.ed, &["alg", "use"]),
    ]);
    let nonce = Expected::Nonce(NONCE);
    let good = claims(json!({}));
    let mismatch = |token, kid: &str| {
        Want::Rejected(Rejection::KeyTypeMismatch {
            token,
            kid: kid.into(),
        })
    };
    let rows: Vec<(&str, String, Want)> = vec![
        (
            "RS256 with an RSA key",
            signed(&KEYS.rsa, &good),
            Want::Accepted,
        ),
        (
            "ES256 with a P-256 key",
            signed(&KEYS.ec, &good),
            Want::Accepted,
        ),
        (
            "EdDSA with an Ed25519 key",
            signed(&KEYS.ed, &good),
            Want::Accepted,
        ),
        (
            "ES256 naming the RSA key",
            signed_as(&KEYS.ec, "rsa", &good),
            mismatch(Algorithm::ES256, "rsa"),
        ),
        (
            "RS256 naming the P-256 key",
            signed_as(&KEYS.rsa, "ec", &good),
            mismatch(Algorithm::RS256, "ec"),
        ),
        (
            "ES384 naming the P-256 key",
            forged(&json!({"alg": "ES384", "kid": "ec"}), &good),
            mismatch(Algorithm::ES384, "ec"),
        ),
        (
            "EdDSA naming the P-256 key",
            signed_as(&KEYS.ed, "ec", &good),
            mismatch(Algorithm::EdDSA, "ec"),
        ),
        (
            "HS256 over the RSA key (key confusion)",
            forged(&json!({"alg": "HS256", "kid": "rsa"}), &good),
            mismatch(Algorithm::HS256, "rsa"),
        ),
        (
            "alg none",
            forged(&json!({"alg": "none", "kid": "rsa"}), &good),
            Want::Malformed,
        ),
        (
            "expired, with a key without alg",
            signed(
                &KEYS.rsa,
                &claims(json!({"iat": now() - 3600, "exp": now() - 600})),
            ),
            Want::Fails(Check::Lifetime),
        ),
    ];
    for (name, token, want) in &rows {
        assert_row(name, &verify(&keys, token, nonce), want);
    }
}

#[test]
fn a_key_for_encryption_verifies_no_signature() {
    let mut jwk = jwk_without(&KEYS.rsa, &["alg"]);
    jwk["use"] = "enc".into();
    let token = signed(&KEYS.rsa, &claims(json!({})));
    assert_row(
        "use: enc",
        &verify(&jwks(&[jwk]), &token, Expected::Nonce(NONCE)),
        &Want::Rejected(Rejection::KeyNotForSignatures { kid: "rsa".into() }),
    );
}
