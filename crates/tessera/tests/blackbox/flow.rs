//! The authorization code flow end to end, and the basic rotation rules.

use reqwest::StatusCode;

use crate::support::{AuthParams, Server, claims, query_param};

#[tokio::test]
async fn code_flow_issues_tokens_with_the_documented_claims() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let location = server
        .authorize_with_password(&auth, crate::support::PASSWORD)
        .await;
    assert!(
        location.starts_with("http://127.0.0.1:41234/callback?"),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("state-123")
    );
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(server.issuer.as_str())
    );
    let code = crate::support::code_from(&location);
    let tokens = server.exchange(&code, &auth).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 60);
    assert!(
        tokens["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("tsr1_")
    );
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["iss"], server.issuer.as_str());
    assert_eq!(id["sub"], "dev");
    assert_eq!(id["aud"], "kubernetes");
    assert_eq!(id["azp"], "kubernetes");
    assert_eq!(id["nonce"], "nonce-456");
    assert_eq!(id["preferred_username"], "dev");
    assert_eq!(id["email"], "dev@example.com");
    assert_eq!(id["email_verified"], true);
    assert!(id["groups"].as_array().unwrap().contains(&"dev".into()));
    assert_eq!(
        id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap(),
        60
    );
    assert!(id["sid"].is_string());
    assert!(id["auth_time"].is_i64());
}

#[tokio::test]
async fn a_refresh_token_works_once_and_rotates() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let first = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = server.refresh(first).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let second = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(first, second);
    assert!(claims(refreshed["id_token"].as_str().unwrap())["nonce"].is_null());
    let (status, again) = server.refresh(second).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let events = server.audit_events("TokenRefreshed", 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["client_id"], "kubernetes");
    assert_eq!(events[0]["uid"], "dev");
    assert_eq!(events[0]["token_id"].as_str().unwrap().len(), 16);
}

#[tokio::test]
async fn a_refresh_may_narrow_the_scope_but_the_session_keeps_it() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let (status, narrowed) = server
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", "kubernetes"),
            ("scope", "groups openid"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{narrowed}");
    assert_eq!(narrowed["scope"], "openid groups");
    let id = claims(narrowed["id_token"].as_str().unwrap());
    assert!(id["groups"].is_array());
    assert!(id["email"].is_null(), "email was not asked for: {id}");
    assert_eq!(
        claims(narrowed["access_token"].as_str().unwrap())["scope"],
        "openid groups"
    );
    let (status, full) = server
        .refresh(narrowed["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{full}");
    assert_eq!(full["scope"], "openid profile email groups");
}
