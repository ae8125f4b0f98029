//! `/userinfo` and `/logout` on the wire, in process through the router, and the post-logout
//! destination as a table.

use axum::http::StatusCode;
use serde_json::json;

use super::PostLogout;
use crate::app::testing::{
    Answer, CONFIDENTIAL_CLIENT, PASSWORD, POST_LOGOUT_REDIRECT, TestApp, USER, grant_refusal,
    query_value, request,
};

fn set_cookies(answer: &Answer) -> Vec<&str> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn userinfo_without_a_valid_bearer_token_is_401_with_a_bearer_challenge() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let id_token = format!("Bearer {}", tokens.id_token);
    let table: [&[(&str, &str)]; 4] = [
        &[],
        &[("authorization", "Bearer garbage")],
        &[("authorization", "Basic ZGVtbzpzM2NyZXQ=")],
        &[("authorization", &id_token)],
    ];
    for headers in table {
        let answer = t.send(request("GET", "/userinfo", headers, None)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(
            answer.json(),
            json!({"error": "invalid_token", "error_description": "the access token is invalid"})
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test]
async fn userinfo_answers_json_that_no_cache_keeps_by_get_or_post() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let bearer = format!("Bearer {}", tokens.access_token);
    for method in ["GET", "POST"] {
        let answer = t
            .send(request(
                method,
                "/userinfo",
                &[("authorization", &bearer)],
                None,
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{method}");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_eq!(answer.json()["sub"], USER);
    }
}

#[test]
fn the_post_logout_destination_is_a_page_a_registered_redirect_or_refused() {
    let registered = "https://app.example/signed-out";
    let table = [
        (None, false, None, PostLogout::Page),
        (None, true, Some("s"), PostLogout::Page),
        (Some(registered), false, None, PostLogout::Unregistered),
        (
            Some(registered),
            true,
            None,
            PostLogout::Redirect(registered.into()),
        ),
        (
            Some(registered),
            true,
            Some("a b"),
            PostLogout::Redirect(format!("{registered}?state=a+b")),
        ),
        (
            Some("https://app.example/out?lang=en"),
            true,
            Some("s"),
            PostLogout::Redirect("https://app.example/out?lang=en&state=s".into()),
        ),
        (
            Some("not a url"),
            true,
            Some("s"),
            PostLogout::Redirect("not a url".into()),
        ),
    ];
    for (uri, is_registered, state, expected) in table {
        assert_eq!(
            PostLogout::of(uri, is_registered, state),
            expected,
            "{uri:?} {state:?}"
        );
    }
}

#[tokio::test]
async fn logout_without_proof_asks_first_and_the_rp_of_this_sign_in_needs_no_question() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let location = t
        .app
        .issue_code(&t.request(CONFIDENTIAL_CLIENT, "openid"), &outcome.sso)
        .await
        .unwrap();
    let code = query_value(&location, "code").unwrap();
    let tokens = t.exchange(CONFIDENTIAL_CLIENT, &code).await.unwrap();
    let sso_cookie = format!("tessera_sso={}", outcome.handle.expose());

    let asked = t.send(request("GET", "/logout", &[], None)).await;
    assert_eq!(asked.status, StatusCode::OK);
    assert!(asked.body.contains("Sign out of every application"));
    assert!(asked.body.contains("name=\"csrf\""));
    let csrf = set_cookies(&asked);
    assert_eq!(csrf.len(), 1);
    assert!(csrf[0].starts_with("tessera_csrf="), "{}", csrf[0]);

    let query = format!(
        "/logout?id_token_hint={}&post_logout_redirect_uri={}&state=x",
        tokens.id_token,
        encode(POST_LOGOUT_REDIRECT)
    );
    let answer = t
        .send(request("GET", &query, &[("cookie", &sso_cookie)], None))
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(
        answer.header("location"),
        Some(format!("{POST_LOGOUT_REDIRECT}?state=x").as_str())
    );
    let cleared = set_cookies(&answer);
    assert_eq!(cleared.len(), 1);
    assert!(cleared[0].starts_with("tessera_sso=;"), "{}", cleared[0]);
    assert!(cleared[0].contains("Max-Age=0"), "{}", cleared[0]);
    assert_eq!(
        grant_refusal(t.refresh(CONFIDENTIAL_CLIENT, &tokens.refresh_token).await),
        "session_revoked"
    );
}

#[tokio::test]
async fn an_unregistered_post_logout_redirect_is_an_error_page_and_ends_nothing() {
    let t = TestApp::start().await;
    let tokens = t.tokens_for(CONFIDENTIAL_CLIENT).await;
    let query = format!(
        "/logout?id_token_hint={}&post_logout_redirect_uri={}",
        tokens.id_token,
        encode("https://evil.example/")
    );
    let answer = t.send(request("GET", &query, &[], None)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer
            .body
            .contains("The post_logout_redirect_uri is not registered for this client.")
    );
    assert!(
        t.refresh(CONFIDENTIAL_CLIENT, &tokens.refresh_token)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_confirmed_logout_post_signs_out_and_shows_the_signed_out_page() {
    let t = TestApp::start().await;
    let tokens = t.tokens().await;
    let hint = format!("id_token_hint={}&csrf=token-of-the-form", tokens.id_token);
    let cookie = [("cookie", "tessera_csrf=token-of-the-form")];
    let answer = t
        .send(request("POST", "/logout", &cookie, Some(&hint)))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("You are signed out."));
    assert_eq!(
        grant_refusal(t.refresh("kubernetes", &tokens.refresh_token).await),
        "session_revoked",
        "the hinted session ends"
    );
}
