//! The authorization endpoint's rules and use cases: redirect URIs, user names, the SSO session
//! a login starts, the login with its limits, and the request's validation and codes as the
//! provider runs them.

use tessera_core::id::ClientId;

use super::*;
use crate::app::testing::{
    ISSUER, PASSWORD, PUBLIC_CLIENT, PUBLIC_REDIRECT, TestApp, USER, query_value,
};

fn client(public: bool) -> Client {
    Client {
        id: ClientId::new("c"),
        public,
        secret_hash: None,
        redirect_uris: vec![
            "http://127.0.0.1/callback".into(),
            "https://app.example/cb".into(),
        ],
        post_logout_redirect_uris: vec![],
        max_idle: None,
    }
}

#[test]
fn public_loopback_redirects_match_any_port_but_nothing_else() {
    let c = client(true);
    assert!(redirect_allowed(&c, "http://127.0.0.1:53123/callback"));
    assert!(redirect_allowed(&c, "http://127.0.0.1/callback"));
    assert!(!redirect_allowed(&c, "http://127.0.0.1:53123/other"));
    assert!(!redirect_allowed(&c, "http://localhost:53123/callback"));
    assert!(!redirect_allowed(&c, "http://127.0.0.1:5/callback?x=1"));
    assert!(!redirect_allowed(&c, "https://app.example:444/cb"));
    assert!(redirect_allowed(&c, "https://app.example/cb"));
}

#[test]
fn a_user_name_is_refused_when_too_long_or_not_printable() {
    let longest = "u".repeat(MAX_USERNAME_LEN);
    let too_long = "u".repeat(MAX_USERNAME_LEN + 1);
    let table = [
        ("dev", true),
        ("", true),
        ("名前", true),
        (longest.as_str(), true),
        (too_long.as_str(), false),
        ("dev\n", false),
        ("d\0ev", false),
        ("\u{7f}", false),
    ];
    for (name, accepted) in table {
        assert_eq!(check_username(name).is_ok(), accepted, "{name:?}");
    }
}

#[test]
fn an_sso_session_lasts_the_session_lifetime_from_the_sign_in() {
    let handle = Secret::from_random("tss1_", [3; 32]);
    let now = UnixMillis(5_000);
    let sso = new_sso(
        &handle,
        SsoId::new("x"),
        Subject::new("dev"),
        now,
        Duration::from_secs(60),
    );
    assert_eq!(sso.handle, handle.hash());
    assert_eq!(sso.id, SsoId::new("x"));
    assert_eq!(sso.subject, Subject::new("dev"));
    assert_eq!((sso.auth_time, sso.expires_at), (now, UnixMillis(65_000)));
    assert_eq!(sso.revoked_at, None);
}

#[test]
fn confidential_clients_need_the_exact_uri() {
    let c = client(false);
    assert!(!redirect_allowed(&c, "http://127.0.0.1:53123/callback"));
    assert!(redirect_allowed(&c, "http://127.0.0.1/callback"));
}

#[tokio::test]
async fn a_login_starts_an_sso_session_that_lasts_the_session_lifetime() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let found = t.app.sso_session(Some(outcome.handle.expose())).await;
    assert_eq!(found.unwrap().as_ref(), Some(&outcome.sso));
    assert_eq!(outcome.sso.subject, Subject::new(USER));
    let logged = t.audit().pop().unwrap();
    assert_eq!(logged["event"], "LoginSucceeded");
    assert_eq!(logged["uid"], USER);
    t.advance(Duration::from_secs(12 * 3600 - 1));
    let still = t.app.sso_session(Some(outcome.handle.expose())).await;
    assert!(still.unwrap().is_some());
    t.advance(Duration::from_secs(1));
    let over = t.app.sso_session(Some(outcome.handle.expose())).await;
    assert_eq!(
        over.unwrap(),
        None,
        "the SSO session ends with its lifetime"
    );
    let unknown = t.app.sso_session(Some("tss1_unknown")).await;
    assert_eq!(unknown.unwrap(), None);
    assert_eq!(t.app.sso_session(None).await.unwrap(), None);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_both_fail_as_bad_credentials() {
    let t = TestApp::start().await;
    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD)] {
        let failed = t.app.login(None, user, password, &t.ctx).await;
        assert!(
            matches!(failed, Err(LoginFailure::BadCredentials)),
            "{user}: {:?}",
            failed.err()
        );
    }
    let audit = t.audit();
    let reasons: Vec<_> = audit.iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons, ["bad_credentials", "bad_credentials"]);
    assert_eq!(audit[1]["uid"], "nobody");
}

#[tokio::test]
async fn an_unprintable_user_name_is_refused_before_it_is_counted_or_logged() {
    let t = TestApp::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "1")]).await;
    for _ in 0..3 {
        let refused = t.app.login(None, "dev\u{0}", PASSWORD, &t.ctx).await;
        assert!(matches!(refused, Err(LoginFailure::InvalidUsername)));
    }
    assert_eq!(t.audit().len(), 0);
    assert!(t.app.login(None, USER, PASSWORD, &t.ctx).await.is_ok());
}

#[tokio::test]
async fn failed_logins_are_limited_until_the_window_is_over() {
    let t = TestApp::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "2")]).await;
    for _ in 0..2 {
        let failed = t.app.login(None, USER, "wrong", &t.ctx).await;
        assert!(matches!(failed, Err(LoginFailure::BadCredentials)));
    }
    for password in ["wrong", PASSWORD] {
        let limited = t.app.login(None, USER, password, &t.ctx).await;
        assert!(
            matches!(limited, Err(LoginFailure::RateLimited(301))),
            "even the right password waits: {:?}",
            limited.err()
        );
    }
    let reasons: Vec<_> = t.audit().iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(
        reasons,
        ["bad_credentials", "bad_credentials", "rate_limited"],
        "one line for the first refusal of the window"
    );
    t.advance(Duration::from_secs(5 * 60));
    assert!(t.app.login(None, USER, PASSWORD, &t.ctx).await.is_ok());
}

#[tokio::test]
async fn an_error_after_the_redirect_is_trusted_goes_back_with_state_and_issuer() {
    let t = TestApp::start().await;
    let params = [
        ("client_id", PUBLIC_CLIENT),
        ("redirect_uri", "http://127.0.0.1:4711/callback"),
        ("response_type", "code"),
        ("scope", "profile"),
        ("state", "s1"),
    ];
    let refused = t.app.validate_authorization(|name| {
        params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    });
    let Err(AuthorizeError::Redirect(location)) = refused else {
        panic!("expected a redirect, got {refused:?}");
    };
    assert!(
        location.starts_with("http://127.0.0.1:4711/callback?"),
        "{location}"
    );
    let value = |name| query_value(&location, name);
    assert_eq!(value("error").as_deref(), Some("invalid_scope"));
    assert_eq!(
        value("error_description").as_deref(),
        Some("the scope must include openid")
    );
    assert_eq!(value("state").as_deref(), Some("s1"));
    assert_eq!(value("iss").as_deref(), Some(ISSUER));
}

#[tokio::test]
async fn a_code_goes_to_the_redirect_uri_with_state_and_issuer_and_remembers_the_request() {
    let t = TestApp::start().await;
    let request = t.request(PUBLIC_CLIENT, "openid groups");
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let location = t.app.issue_code(&request, &outcome.sso).await.unwrap();
    assert!(location.starts_with(PUBLIC_REDIRECT), "{location}");
    assert_eq!(
        query_value(&location, "state").as_deref(),
        Some("af0ifjsldkj")
    );
    assert_eq!(query_value(&location, "iss").as_deref(), Some(ISSUER));
    let code = query_value(&location, "code").unwrap();
    assert!(code.starts_with("tsc1_"), "{code}");
    let tokens = t.exchange(PUBLIC_CLIENT, &code).await.unwrap();
    assert_eq!(tokens.scope, "openid groups");
}
