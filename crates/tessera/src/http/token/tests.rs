//! The wire contract of `/token`, `/revoke` and `/introspect`, in process through the router:
//! form parsing, client authentication (`client_secret_basic`, `client_secret_post`, `none`),
//! and OAuth error JSON that no cache keeps (RFC 6749 §5.1, §5.2).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use super::{credentials, parse_basic};
use crate::app::testing::{
    Answer, CONFIDENTIAL_CLIENT, CONFIDENTIAL_REDIRECT, CONFIDENTIAL_SECRET, PUBLIC_CLIENT,
    TestApp, VERIFIER, basic, request,
};
use crate::http::form::Params;

async fn post(t: &TestApp, path: &str, headers: &[(&str, &str)], form: &str) -> Answer {
    t.send(request("POST", path, headers, Some(form))).await
}

fn assert_oauth_error(answer: &Answer, status: StatusCode, error: &str, description: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"error": error, "error_description": description})
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("pragma"), Some("no-cache"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
}

/// A fresh code of the confidential client, and the form that exchanges it.
async fn confidential_code_form(t: &TestApp) -> String {
    let code = t.code(&t.request(CONFIDENTIAL_CLIENT, "openid")).await;
    format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={VERIFIER}",
        url::form_urlencoded::byte_serialize(CONFIDENTIAL_REDIRECT.as_bytes()).collect::<String>()
    )
}

#[tokio::test]
async fn an_unsupported_grant_type_is_oauth_error_json_that_no_cache_keeps() {
    let t = TestApp::start().await;
    let answer = post(
        &t,
        "/token",
        &[],
        "grant_type=password&client_id=kubernetes",
    )
    .await;
    assert_oauth_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
        "grant_type `password` is not supported",
    );
}

#[tokio::test]
async fn a_missing_or_repeated_parameter_or_a_body_that_is_no_form_is_invalid_request() {
    let t = TestApp::start().await;
    let table = [
        ("", "parameter `grant_type` is required"),
        (
            "grant_type=refresh_token&grant_type=refresh_token",
            "parameter `grant_type` is repeated",
        ),
        (
            "grant_type=authorization_code&client_id=kubernetes",
            "parameter `code` is required",
        ),
        (
            "grant_type=refresh_token&client_id=kubernetes",
            "parameter `refresh_token` is required",
        ),
    ];
    for (form, description) in table {
        let answer = post(&t, "/token", &[], form).await;
        assert_oauth_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description,
        );
    }
    let json_body = request(
        "POST",
        "/token",
        &[("content-type", "application/json")],
        None,
    );
    assert_oauth_error(
        &t.send(json_body).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the body must be application/x-www-form-urlencoded",
    );
}

#[tokio::test]
async fn get_on_the_token_endpoints_is_405_allowing_post() {
    let t = TestApp::start().await;
    for path in ["/token", "/revoke", "/introspect"] {
        let answer = t.send(request("GET", path, &[], None)).await;
        assert_oauth_error(
            &answer,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "this endpoint accepts POST only",
        );
        assert_eq!(answer.header("allow"), Some("POST"));
    }
}

#[tokio::test]
async fn the_confidential_client_authenticates_with_basic_or_in_the_body() {
    let t = TestApp::start().await;
    let authorization = basic(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET);
    let exchange = confidential_code_form(&t).await;
    let answer = post(
        &t,
        "/token",
        &[("authorization", &authorization)],
        &exchange,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("pragma"), Some("no-cache"));
    let tokens = answer.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 60);
    assert_eq!(tokens["scope"], "openid");
    let refresh = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={CONFIDENTIAL_CLIENT}\
         &client_secret={CONFIDENTIAL_SECRET}",
        tokens["refresh_token"].as_str().unwrap()
    );
    let answer = post(&t, "/token", &[], &refresh).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.json()["id_token"].is_string());
}

#[tokio::test]
async fn an_empty_basic_password_is_no_secret_so_the_public_client_passes() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let authorization = basic(PUBLIC_CLIENT, "");
    let form = format!(
        "grant_type=refresh_token&refresh_token={}",
        tokens.refresh_token
    );
    let answer = post(&t, "/token", &[("authorization", &authorization)], &form).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn failed_client_authentication_is_401_with_a_basic_challenge_and_spends_nothing() {
    let t = TestApp::start().await;
    let exchange = confidential_code_form(&t).await;
    let wrong = basic(CONFIDENTIAL_CLIENT, "wrong");
    let unknown = format!("{exchange}&client_id=nobody");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("authorization", &wrong)], &exchange),
        (&[("authorization", "Basic !!!")], &exchange),
        (&[("authorization", "Bearer abc")], &exchange),
        (&[], &exchange),
        (&[], &unknown),
    ];
    for (headers, form) in cases {
        let answer = post(&t, "/token", headers, form).await;
        assert_oauth_error(
            &answer,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Basic realm="tessera""#)
        );
    }
    let right = basic(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET);
    let answer = post(&t, "/token", &[("authorization", &right)], &exchange).await;
    assert_eq!(answer.status, StatusCode::OK, "the code was not spent");
}

#[tokio::test]
async fn two_ways_of_client_authentication_at_once_are_refused() {
    let t = TestApp::start().await;
    let exchange = confidential_code_form(&t).await;
    let right = basic(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET);
    let both = format!("{exchange}&client_secret={CONFIDENTIAL_SECRET}");
    let answer = post(&t, "/token", &[("authorization", &right)], &both).await;
    assert_oauth_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "use one client authentication method, not two",
    );
    let other_id = format!("{exchange}&client_id={PUBLIC_CLIENT}");
    let answer = post(&t, "/token", &[("authorization", &right)], &other_id).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let same_id = format!("{exchange}&client_id={CONFIDENTIAL_CLIENT}");
    let answer = post(&t, "/token", &[("authorization", &right)], &same_id).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn an_invalid_grant_says_nothing_of_its_reason() {
    let t = TestApp::start().await;
    let form = "grant_type=refresh_token&refresh_token=tsr1_unknown&client_id=kubernetes";
    assert_oauth_error(
        &post(&t, "/token", &[], form).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "the grant is invalid or expired",
    );
}

#[tokio::test]
async fn revocation_and_introspection_answer_with_no_store() {
    let t = TestApp::start().await;
    let tokens = t.tokens_for(CONFIDENTIAL_CLIENT).await;
    let right = basic(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET);
    let auth = [("authorization", right.as_str())];
    let form = format!("token={}", tokens.access_token);
    let active = post(&t, "/introspect", &auth, &form).await;
    assert_eq!(active.status, StatusCode::OK);
    assert_eq!(active.header("cache-control"), Some("no-store"));
    assert_eq!(active.json()["active"], true);
    let form = format!("token={}", tokens.refresh_token);
    let revoked = post(&t, "/revoke", &auth, &form).await;
    assert_eq!(
        (revoked.status, revoked.body.as_str()),
        (StatusCode::OK, "")
    );
    assert_eq!(revoked.header("cache-control"), Some("no-store"));
    let form = format!("token={}", tokens.access_token);
    let inactive = post(&t, "/introspect", &auth, &form).await;
    assert_eq!(inactive.json(), json!({"active": false}));
    let public = format!("token={}&client_id={PUBLIC_CLIENT}", tokens.access_token);
    let refused = post(&t, "/introspect", &[], &public).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let missing = post(&t, "/revoke", &auth, "").await;
    assert_oauth_error(
        &missing,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "parameter `token` is required",
    );
}

#[test]
fn basic_credentials_are_form_decoded_and_anything_else_is_refused() {
    let header = |text: &str| HeaderValue::from_str(text).unwrap();
    let table: [(&str, Option<(&str, &str)>); 7] = [
        ("Basic ZGVtbzpzM2NyZXQ=", Some(("demo", "s3cret"))),
        ("basic ZGVtbzpzM2NyZXQ=", Some(("demo", "s3cret"))),
        // `my%20app:a%3Ab` form-decodes to `my app` and `a:b` (RFC 6749 §2.3.1).
        ("Basic bXklMjBhcHA6YSUzQWI=", Some(("my app", "a:b"))),
        ("Basic a3ViZXJuZXRlczo=", Some(("kubernetes", ""))),
        ("Basic ZGVtbw==", None),
        ("Bearer ZGVtbzpzM2NyZXQ=", None),
        ("Basic", None),
    ];
    for (text, expected) in table {
        let parsed = parse_basic(&header(text));
        let parsed = parsed.as_ref().map(|(id, s)| (id.as_str(), s.as_str()));
        assert_eq!(parsed, expected, "{text}");
    }
    let oversized = format!("Basic {}", "A".repeat(4097));
    assert_eq!(parse_basic(&header(&oversized)), None);
}

#[test]
fn credentials_come_from_one_place_and_an_empty_basic_secret_is_none() {
    let params = |form: &str| Params::parse(form.as_bytes()).unwrap();
    let with_basic = |text: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(text).unwrap());
        headers
    };
    let none = HeaderMap::new();
    let table = [
        (
            &none,
            "client_id=demo&client_secret=s",
            Some(("demo", Some("s"))),
        ),
        (&none, "client_id=kubernetes", Some(("kubernetes", None))),
        (&none, "client_secret=s", None),
        (
            &with_basic("Basic ZGVtbzpzM2NyZXQ="),
            "",
            Some(("demo", Some("s3cret"))),
        ),
        (
            &with_basic("Basic a3ViZXJuZXRlczo="),
            "",
            Some(("kubernetes", None)),
        ),
        (
            &with_basic("Basic ZGVtbzpzM2NyZXQ="),
            "client_id=other",
            None,
        ),
    ];
    for (headers, form, expected) in table {
        let found = credentials(headers, &params(form)).ok();
        let found = found.as_ref().map(|c| (c.id.as_str(), c.secret.as_deref()));
        assert_eq!(found, expected, "{form}");
    }
}
