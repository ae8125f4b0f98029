//! Signing keys through the real binary: `tessera keys rotate` against a running server, the
//! JWKS keeping the previous key, and the other signing algorithms, all verified with an
//! independent JWT implementation (`jsonwebtoken`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Server, jwt_header, text, verify_jwt};

fn kids(jwks: &Value) -> BTreeSet<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs `tessera keys rotate` on the server's data directory and returns the new keys' ids by
/// algorithm: one RS256 key for id_tokens and one ES256 key for access tokens by default.
fn rotate(server: &Server) -> BTreeMap<String, String> {
    let output = server.run_cli(&["keys", "rotate"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let added: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("added signing key "))
        .map(|l| {
            let (kid, alg) = l.split_once(' ').unwrap();
            (alg.trim_matches(['(', ')']).to_owned(), kid.to_owned())
        })
        .collect();
    assert_eq!(
        added.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ES256", "RS256"],
        "{stdout}"
    );
    added
}

/// Polls /jwks until it publishes exactly `expected` (the server re-reads keys every second).
async fn wait_for_jwks(server: &Server, expected: &BTreeSet<String>) -> Value {
    for _ in 0..150 {
        let jwks = server.jwks().await;
        if &kids(&jwks) == expected {
            return jwks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the JWKS never became {expected:?}: {}",
        server.jwks().await
    );
}

/// The kid of each token of a token answer.
fn token_kids(answer: &Value) -> [String; 2] {
    ["id_token", "access_token"].map(|field| text(&jwt_header(&text(answer, field)), "kid"))
}

#[tokio::test]
async fn after_keys_rotate_new_tokens_use_the_new_key_and_old_tokens_still_verify() {
    let server = Server::start_with(&[("TESSERA_KEYS__RELOAD_INTERVAL", "1s")]).await;
    let before = server.kubernetes_tokens().await;
    let old_id_token = text(&before, "id_token");
    let [old_id, old_access] = token_kids(&before);
    assert_eq!(
        kids(&server.jwks().await),
        BTreeSet::from([old_id.clone(), old_access.clone()])
    );

    let added = rotate(&server);
    let (new_id, new_access) = (added["RS256"].clone(), added["ES256"].clone());
    assert_ne!(new_id, old_id);
    assert_ne!(new_access, old_access);
    let jwks = wait_for_jwks(
        &server,
        &BTreeSet::from([
            old_id.clone(),
            old_access.clone(),
            new_id.clone(),
            new_access.clone(),
        ]),
    )
    .await;

    let (status, after) = server.refresh(&text(&before, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(token_kids(&after), [new_id.clone(), new_access.clone()]);
    for field in ["id_token", "access_token"] {
        verify_jwt(&jwks, &text(&after, field), &server.issuer, "kubernetes").unwrap();
    }
    let old = verify_jwt(&jwks, &old_id_token, &server.issuer, "kubernetes").unwrap();
    assert_eq!(old["sub"], "dev");
    let rotated = server.audit_events("KeyRotated", 4).await;
    for kid in [&new_id, &new_access] {
        assert!(
            rotated.iter().any(|e| e["kid"] == kid.as_str()),
            "{rotated:?}"
        );
    }

    // Only the current key and its predecessor are published: a second rotation retires the
    // first keys, and tokens signed with them stop verifying.
    let newest = rotate(&server);
    let jwks = wait_for_jwks(
        &server,
        &BTreeSet::from([
            new_id.clone(),
            new_access.clone(),
            newest["RS256"].clone(),
            newest["ES256"].clone(),
        ]),
    )
    .await;
    assert!(verify_jwt(&jwks, &old_id_token, &server.issuer, "kubernetes").is_err());
    verify_jwt(
        &jwks,
        &text(&after, "id_token"),
        &server.issuer,
        "kubernetes",
    )
    .unwrap();
}

/// Starts a server signing with `alg` and checks its tokens against its JWKS.
async fn tokens_verify_with(alg: &str, kty: &str) {
    let server = Server::start_with(&[("TESSERA_TOKENS__SIGNING_ALG", alg)]).await;
    let discovery = server.get("/.well-known/openid-configuration").await.body;
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!([alg])
    );
    let jwks = server.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kty"], kty);
    assert_eq!(keys[0]["alg"], alg);

    let tokens = server.kubernetes_tokens().await;
    let (status, refreshed) = server.refresh(&text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    for answer in [&tokens, &refreshed] {
        for field in ["id_token", "access_token"] {
            let token = text(answer, field);
            assert_eq!(jwt_header(&token)["alg"], alg, "{field}");
            let claims = verify_jwt(&jwks, &token, &server.issuer, "kubernetes")
                .unwrap_or_else(|e| panic!("{alg} {field}: {e}"));
            assert_eq!(claims["sub"], "dev");
        }
    }
}

#[tokio::test]
async fn es256_tokens_verify_against_the_jwks() {
    tokens_verify_with("ES256", "EC").await;
}

#[tokio::test]
async fn eddsa_tokens_verify_against_the_jwks() {
    tokens_verify_with("EdDSA", "OKP").await;
}

#[tokio::test]
async fn by_default_access_tokens_are_es256_beside_rs256_id_tokens_and_both_verify() {
    let server = Server::start().await;
    let jwks = server.jwks().await;
    let algs: BTreeSet<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap())
        .collect();
    assert_eq!(algs, BTreeSet::from(["RS256", "ES256"]));
    let tokens = server.kubernetes_tokens().await;
    let (status, refreshed) = server.refresh(&text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    for answer in [&tokens, &refreshed] {
        let id_token = text(answer, "id_token");
        let access_token = text(answer, "access_token");
        assert_eq!(jwt_header(&id_token)["alg"], "RS256");
        assert_eq!(jwt_header(&access_token)["alg"], "ES256");
        assert_eq!(jwt_header(&access_token)["typ"], "at+jwt");
        verify_jwt(&jwks, &id_token, &server.issuer, "kubernetes").unwrap();
        verify_jwt(&jwks, &access_token, &server.issuer, "kubernetes").unwrap();
    }
    // /userinfo verifies the ES256 access token with its own key.
    let userinfo = server
        .http
        .get(server.url("/userinfo"))
        .bearer_auth(text(&refreshed, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), StatusCode::OK);
}

#[tokio::test]
async fn access_token_alg_rs256_signs_both_tokens_with_the_one_rsa_key() {
    let server = Server::start_with(&[("TESSERA_TOKENS__ACCESS_TOKEN_ALG", "RS256")]).await;
    let jwks = server.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["alg"], "RS256");
    let tokens = server.kubernetes_tokens().await;
    for field in ["id_token", "access_token"] {
        let token = text(&tokens, field);
        assert_eq!(jwt_header(&token)["alg"], "RS256", "{field}");
        assert_eq!(jwt_header(&token)["kid"], keys[0]["kid"], "{field}");
        verify_jwt(&jwks, &token, &server.issuer, "kubernetes").unwrap();
    }
}
