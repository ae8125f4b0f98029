//! `/authorize` and `/login` on the wire, in process through the router, and the login form's
//! pure parts: what a failed sign-in tells the user, and the request the form carries.

use axum::http::StatusCode;

use super::{Destination, Retry, carried, form_body};
use crate::app::testing::{
    Answer, CONFIDENTIAL_CLIENT, CONFIDENTIAL_REDIRECT, ISSUER, PASSWORD, PUBLIC_CLIENT,
    PUBLIC_REDIRECT, TestApp, USER, VERIFIER, query_value, request,
};
use crate::app::{AppError, LoginFailure};

fn set_cookies(answer: &Answer) -> Vec<&str> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The query of an authorization request of the public client, with `extra` appended.
fn authorize_query(extra: &str) -> String {
    let challenge = tessera_core::pkce::s256_challenge(VERIFIER);
    let redirect: String =
        url::form_urlencoded::byte_serialize(PUBLIC_REDIRECT.as_bytes()).collect();
    format!(
        "client_id={PUBLIC_CLIENT}&redirect_uri={redirect}&response_type=code&scope=openid\
         &state=st&code_challenge={challenge}&code_challenge_method=S256{extra}"
    )
}

#[test]
fn a_failed_sign_in_shows_the_form_again_with_a_status_and_sentence_of_its_own() {
    let table = [
        (
            LoginFailure::BadCredentials,
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password.",
            None,
        ),
        (
            LoginFailure::InvalidUsername,
            StatusCode::BAD_REQUEST,
            "User names are at most 256 bytes of printable text.",
            None,
        ),
        (
            LoginFailure::RateLimited(42),
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins. Try again in 42 seconds.",
            Some(42),
        ),
    ];
    for (failure, status, message, retry_after) in table {
        let retry = Retry::after(failure).unwrap();
        let expected = Retry {
            status,
            message: message.into(),
            retry_after,
        };
        assert_eq!(retry, expected);
    }
    let unavailable = LoginFailure::Unavailable(AppError::InvalidToken);
    assert!(
        Retry::after(unavailable).is_err(),
        "a store failure is a server error, not a form to retry"
    );
    let expired = Retry::expired_form();
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert_eq!(
        expired.message,
        "The form expired or was not sent from this browser; please sign in again."
    );
}

#[tokio::test]
async fn the_form_carries_a_request_that_validates_into_the_same_request() {
    let t = TestApp::start().await;
    let request = t.request(PUBLIC_CLIENT, "groups openid");
    let destination = Destination::Client(request.clone());
    let fields = carried(&destination);
    let again = t
        .app
        .validate_authorization(|name| {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
    assert_eq!(format!("{again:?}"), format!("{request:?}"));
    let local = [("local", "Local account")];
    let body = form_body(
        &destination,
        "/login",
        "c5rf",
        Some("<b>bad</b>"),
        &local,
        &[],
    );
    assert!(body.contains("<p class=\"error\" role=\"alert\">&lt;b&gt;bad&lt;/b&gt;</p>"));
    assert!(body.contains("<input type=\"hidden\" name=\"csrf\" value=\"c5rf\">"));
    assert!(body.contains("<input type=\"hidden\" name=\"state\" value=\"af0ifjsldkj\">"));
    assert!(body.contains("action=\"/login\""));
}

#[tokio::test]
async fn authorize_shows_the_form_with_a_csrf_cookie_and_a_login_redirects_with_a_code() {
    let t = TestApp::start().await;
    let uri = format!("/authorize?{}", authorize_query(""));
    let form = t.send(request("GET", &uri, &[], None)).await;
    assert_eq!(form.status, StatusCode::OK);
    assert_eq!(form.header("cache-control"), Some("no-store"));
    let csrf_cookie = set_cookies(&form)[0].to_owned();
    assert!(csrf_cookie.starts_with("tessera_csrf="), "{csrf_cookie}");
    for attribute in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(csrf_cookie.contains(attribute), "{csrf_cookie}");
    }
    let csrf = csrf_cookie["tessera_csrf=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(form.body.contains(&format!("value=\"{csrf}\"")));

    let cookie = format!("tessera_csrf={csrf}");
    let login = |password: &str, sent_csrf: &str| {
        let body = format!(
            "{}&csrf={sent_csrf}&username={USER}&password={}",
            authorize_query(""),
            url::form_urlencoded::byte_serialize(password.as_bytes()).collect::<String>()
        );
        request("POST", "/login", &[("cookie", &cookie)], Some(&body))
    };
    let forged = t.send(login(PASSWORD, "another")).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let wrong = t.send(login("wrong", &csrf)).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user name or password."));

    let signed_in = t.send(login(PASSWORD, &csrf)).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let location = signed_in.header("location").unwrap();
    assert!(location.starts_with(PUBLIC_REDIRECT), "{location}");
    assert_eq!(query_value(location, "state").as_deref(), Some("st"));
    assert_eq!(query_value(location, "iss").as_deref(), Some(ISSUER));
    let code = query_value(location, "code").unwrap();
    assert!(t.exchange(PUBLIC_CLIENT, &code).await.is_ok());
    let sso_cookie = set_cookies(&signed_in)[0].to_owned();
    assert!(sso_cookie.starts_with("tessera_sso=tss1_"), "{sso_cookie}");
    for attribute in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(sso_cookie.contains(attribute), "{sso_cookie}");
    }
}

#[tokio::test]
async fn with_an_sso_cookie_authorize_redirects_at_once_unless_a_login_is_forced() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let cookie = format!("tessera_sso={}", outcome.handle.expose());
    let uri = format!("/authorize?{}", authorize_query(""));
    let answer = t
        .send(request("GET", &uri, &[("cookie", &cookie)], None))
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let location = answer.header("location").unwrap();
    assert!(query_value(location, "code").is_some(), "{location}");
    let uri = format!("/authorize?{}", authorize_query("&prompt=login"));
    let forced = t
        .send(request("GET", &uri, &[("cookie", &cookie)], None))
        .await;
    assert_eq!(forced.status, StatusCode::OK, "prompt=login shows the form");
    let uri = format!("/authorize?{}", authorize_query("&prompt=none"));
    let silent = t.send(request("GET", &uri, &[], None)).await;
    assert_eq!(silent.status, StatusCode::SEE_OTHER);
    let location = silent.header("location").unwrap();
    assert_eq!(
        query_value(location, "error").as_deref(),
        Some("login_required")
    );
    assert_eq!(query_value(location, "state").as_deref(), Some("st"));
}

/// OpenID Connect Core §3.1.2.1: `max_age` asks for a sign-in no older than that many seconds;
/// an SSO session that is older shows the form instead of answering silently.
#[tokio::test]
async fn max_age_lets_only_a_recent_enough_sign_in_answer_silently() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let cookie = format!("tessera_sso={}", outcome.handle.expose());
    t.advance(std::time::Duration::from_secs(120));
    let ask = |max_age: &str| {
        let uri = format!(
            "/authorize?{}",
            authorize_query(&format!("&max_age={max_age}"))
        );
        t.send(request("GET", &uri, &[("cookie", &cookie)], None))
    };
    assert_eq!(ask("3600").await.status, StatusCode::SEE_OTHER);
    assert_eq!(ask("120").await.status, StatusCode::SEE_OTHER);
    assert_eq!(ask("119").await.status, StatusCode::OK, "too old: the form");
    assert_eq!(
        ask("0").await.status,
        StatusCode::OK,
        "max_age=0: always the form"
    );
    let refused = ask("soon").await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER);
    let location = refused.header("location").unwrap();
    assert_eq!(
        query_value(location, "error").as_deref(),
        Some("invalid_request")
    );
}

/// Issue 13: an SSO session unused for `session.sso_idle_timeout` (30m) no longer answers
/// silently; every silent answer restarts its idle clock.
#[tokio::test]
async fn an_sso_session_idle_past_its_timeout_shows_the_form_and_each_use_renews_it() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let cookie = format!("tessera_sso={}", outcome.handle.expose());
    let uri = format!("/authorize?{}", authorize_query(""));
    let ask = || t.send(request("GET", &uri, &[("cookie", &cookie)], None));
    for _ in 0..3 {
        t.advance(std::time::Duration::from_secs(29 * 60));
        assert_eq!(ask().await.status, StatusCode::SEE_OTHER, "used within 30m");
    }
    t.advance(std::time::Duration::from_secs(30 * 60 + 1));
    let form = ask().await;
    assert_eq!(form.status, StatusCode::OK, "idle past 30m: the form");
}

/// A client's own `max_idle` (`demo`: 5m) replaces `session.sso_idle_timeout` for its requests;
/// the timeout itself is configurable.
#[tokio::test]
async fn a_clients_max_idle_replaces_the_sso_idle_timeout_for_it() {
    let t = TestApp::start().await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let cookie = format!("tessera_sso={}", outcome.handle.expose());
    t.advance(std::time::Duration::from_secs(6 * 60));
    let redirect: String =
        url::form_urlencoded::byte_serialize(CONFIDENTIAL_REDIRECT.as_bytes()).collect();
    let demo = format!(
        "/authorize?client_id={CONFIDENTIAL_CLIENT}&redirect_uri={redirect}&response_type=code\
         &scope=openid&state=st"
    );
    let answer = t
        .send(request("GET", &demo, &[("cookie", &cookie)], None))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "idle past demo's 5m");
    let uri = format!("/authorize?{}", authorize_query(""));
    let answer = t
        .send(request("GET", &uri, &[("cookie", &cookie)], None))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::SEE_OTHER,
        "kubernetes: within 30m"
    );

    let t = TestApp::start_with(&[("TESSERA_SESSION__SSO_IDLE_TIMEOUT", "2m")]).await;
    let outcome = t.app.login(None, USER, PASSWORD, &t.ctx).await.unwrap();
    let cookie = format!("tessera_sso={}", outcome.handle.expose());
    t.advance(std::time::Duration::from_secs(3 * 60));
    let answer = t
        .send(request("GET", &uri, &[("cookie", &cookie)], None))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "idle past the configured 2m");
}

#[tokio::test]
async fn too_many_failed_sign_ins_show_the_form_with_429_and_retry_after() {
    let t = TestApp::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "1")]).await;
    let cookie = [("cookie", "tessera_csrf=c")];
    let body = format!(
        "{}&csrf=c&username={USER}&password=wrong",
        authorize_query("")
    );
    let first = t
        .send(request("POST", "/login", &cookie, Some(&body)))
        .await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    let limited = t
        .send(request("POST", "/login", &cookie, Some(&body)))
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("301"));
    assert!(limited.body.contains("Try again in 301 seconds."));
}
