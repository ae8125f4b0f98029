//! The proxy's sessions through its router with this process's provider, in both stores
//! (`server`: a handle in the cookie; `cookie`: the whole session sealed in it), the clock
//! advanced instead of slept: sign-in, the idle and the absolute timeout, the refresh of the
//! id_token before it expires (once for many requests at once), and sign-out.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::rig::{Answer, Browser, DEV_GROUPS, PROXY_HOST, Rig, Setup, claims};

/// Both values of `proxy.session.store`.
const STORES: [&str; 2] = ["server", "cookie"];

/// A rig whose `proxy.session` is `store` and the flow-mapping entries `rest`.
async fn rig(store: &str, rest: &str) -> Rig {
    Rig::start(Setup::local(&format!("{{store: {store}{rest}}}"))).await
}

/// The `Authorization` header the upstream received, as the id_token's claims.
fn bearer_claims(echo: &Answer) -> (String, Value) {
    let bearer = echo
        .echoed("authorization")
        .expect("the id_token is passed on");
    let id_token = bearer.strip_prefix("Bearer ").unwrap().to_owned();
    let claims = claims(&id_token);
    (id_token, claims)
}

/// Whether `set_cookie` writes cookie `name` with `Max-Age=max_age`.
fn writes(set_cookie: &str, name: &str, max_age: i64) -> bool {
    let mut parts = set_cookie.split("; ");
    let named = parts
        .next()
        .is_some_and(|pair| pair.split('=').next() == Some(name));
    named && parts.any(|attribute| attribute == format!("Max-Age={max_age}"))
}

/// Whether the answer clears the session cookie.
fn clears_session(answer: &Answer) -> bool {
    answer
        .set_cookies()
        .iter()
        .any(|c| writes(c, "_tessera_proxy", 0))
}

/// The provider's authorization URL a page at `path` leads a browser without a session to,
/// through the proxy's `/oauth2/start`.
async fn authorize_of(browser: &Browser<'_>, path: &str) -> String {
    let page = browser.navigate(path).await;
    assert_eq!(page.status, StatusCode::FOUND, "{}", page.text());
    let start = browser.navigate(&page.location()).await;
    assert_eq!(start.status, StatusCode::FOUND, "{}", start.text());
    start.location()
}

/// Whether an authorization request asks the provider for a sign-in with credentials, not its
/// single sign-on (OpenID Connect Core §3.1.2.1: `prompt=login`, `max_age=0`).
fn asks_for_credentials(authorize: &str) -> bool {
    let url = url::Url::parse(authorize).unwrap();
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    query.get("prompt").map(String::as_str) == Some("login")
        && query.get("max_age").map(String::as_str) == Some("0")
}

/// The session cookies (single or chunks, not login states nor the demand for credentials)
/// the browser holds.
fn session_cookies(browser: &Browser<'_>) -> Vec<(String, String)> {
    browser
        .cookies()
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix("_tessera_proxy").is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('_')
                        .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect()
}

#[tokio::test]
async fn sign_in_passes_the_user_to_the_upstream_and_sign_out_ends_the_session_in_both_stores() {
    for store in STORES {
        let rig = rig(store, "").await;
        let browser = rig.browser();
        let api = browser.fetch("/api/pods").await;
        assert_eq!(
            api.status,
            StatusCode::UNAUTHORIZED,
            "{store}: no redirect for an API call"
        );

        let landed = browser.log_in("/pods?namespace=a").await;
        assert_eq!(
            landed, "/pods?namespace=a",
            "{store}: back to the page asked for"
        );
        let cookie = browser.cookies()["_tessera_proxy"].clone();
        assert_eq!(
            cookie.starts_with("tsp1_"),
            store == "server",
            "{store}: a handle only in the server store"
        );
        let echo = browser.fetch("/echo?x=1").await;
        assert_eq!(echo.status, StatusCode::OK, "{store}");
        assert_eq!(echo.json()["path"], "/echo?x=1");
        assert_eq!(echo.echoed("x-auth-request-user").as_deref(), Some("dev"));
        assert_eq!(
            echo.echoed("x-auth-request-groups").as_deref(),
            Some(DEV_GROUPS)
        );
        assert_eq!(
            echo.echoed("x-auth-request-email").as_deref(),
            Some("dev@example.com")
        );
        let (_, claims) = bearer_claims(&echo);
        assert_eq!(claims["sub"], "dev");
        assert_eq!(claims["aud"], "tessera-proxy");
        assert_eq!(
            echo.echoed("cookie"),
            None,
            "{store}: the session never reaches the upstream"
        );

        let single_sign_on = browser.provider_cookies();
        let out = browser.sign_out("/oauth2/sign_out").await;
        assert_eq!(out.status, StatusCode::FOUND, "{store}");
        let logout = url::Url::parse(&out.location()).unwrap();
        assert_eq!(
            logout.as_str().split('?').next(),
            Some("https://provider.test/logout"),
            "{store}: on to the provider's end_session_endpoint"
        );
        let query: BTreeMap<String, String> = logout.query_pairs().into_owned().collect();
        assert_eq!(query["client_id"], "tessera-proxy");
        assert_eq!(
            query["post_logout_redirect_uri"],
            format!("http://{PROXY_HOST}/oauth2/signed_out")
        );
        assert_eq!(query["state"], format!("http://{PROXY_HOST}/"));
        assert_eq!(
            crate::rig::claims(&query["id_token_hint"])["aud"],
            "tessera-proxy"
        );
        assert!(clears_session(&out), "{store}: {:?}", out.set_cookies());
        assert!(
            session_cookies(&browser).is_empty(),
            "{store}: the cookie is cleared"
        );
        let revoked = rig.audit_events("SessionRevoked");
        assert_eq!(revoked.len(), 1, "{store}");
        assert_eq!(revoked[0]["reason"], "revocation_endpoint");
        assert_eq!(
            browser.follow_sign_out(&out).await,
            format!("http://{PROXY_HOST}/"),
            "{store}: the provider signs out without asking and the browser lands on rd"
        );
        let authorize = authorize_of(&browser, "/").await;
        browser.set_provider_cookies(single_sign_on);
        assert!(
            !browser.provider_still_signed_in(&authorize).await,
            "{store}: the provider's single sign-on session has ended"
        );
        browser.set_cookies([("_tessera_proxy".to_owned(), cookie)].into());
        if store == "cookie" {
            // A sealed session replayed after sign-out still opens: it lasts until its next
            // refresh, which the provider refuses.
            rig.advance(Duration::from_secs(51));
        }
        let dead = browser.fetch("/echo").await;
        assert_eq!(
            dead.status,
            StatusCode::UNAUTHORIZED,
            "{store}: the old cookie is dead"
        );
    }
}

/// Carries `an_idle_session_goes_back_to_login` of the black-box `proxy.rs`, whose 0.8 s and
/// 2.2 s sleeps are now the clock advanced.
#[tokio::test]
async fn an_idle_session_goes_back_to_login_in_both_stores() {
    for store in STORES {
        let rig = rig(store, ", idle_timeout: 2s").await;
        let browser = rig.browser();
        browser.log_in("/").await;
        for _ in 0..3 {
            rig.advance(Duration::from_millis(800));
            let echo = browser.fetch("/echo").await;
            assert_eq!(
                echo.status,
                StatusCode::OK,
                "{store}: activity keeps it alive"
            );
        }
        rig.advance(Duration::from_millis(2200));
        let page = browser.navigate("/pods").await;
        assert_eq!(page.status, StatusCode::FOUND, "{store}");
        assert!(
            page.location().starts_with("/oauth2/start"),
            "{}",
            page.location()
        );
        assert!(clears_session(&page), "{store}: {:?}", page.set_cookies());
        let start = browser.navigate(&page.location()).await;
        assert!(
            asks_for_credentials(&start.location()),
            "{store}: {}",
            start.location()
        );
        let revoked = rig.audit_events_once("SessionRevoked", 1).await;
        assert_eq!(
            revoked.len(),
            1,
            "{store}: the idle session is revoked at the provider too"
        );
        assert_eq!(revoked[0]["reason"], "idle_timeout", "{store}");
    }
}

#[tokio::test]
async fn a_busy_session_ends_at_its_absolute_timeout_in_both_stores() {
    for store in STORES {
        let rig = rig(store, ", absolute_timeout: 10s").await;
        let browser = rig.browser();
        browser.log_in("/").await;
        let written = browser.set_cookie_history();
        assert!(
            written.iter().any(|c| writes(c, "_tessera_proxy", 10)),
            "{store}: the cookie lives until the absolute end: {written:?}"
        );
        for _ in 0..3 {
            rig.advance(Duration::from_secs(3));
            let echo = browser.fetch("/echo").await;
            assert_eq!(
                echo.status,
                StatusCode::OK,
                "{store}: within the absolute timeout"
            );
        }
        rig.advance(Duration::from_secs(1));
        let api = browser.fetch("/echo").await;
        assert_eq!(
            api.status,
            StatusCode::UNAUTHORIZED,
            "{store}: however busy"
        );
        assert!(clears_session(&api), "{store}: {:?}", api.set_cookies());
        let authorize = authorize_of(&browser, "/pods").await;
        assert!(
            asks_for_credentials(&authorize),
            "{store}: an API call ended the session; the next page still signs in afresh: {authorize}"
        );
        let revoked = rig.audit_events_once("SessionRevoked", 1).await;
        assert_eq!(revoked.len(), 1, "{store}: revoked at the provider too");
        assert_eq!(revoked[0]["reason"], "absolute_timeout", "{store}");
    }
}

#[tokio::test]
async fn the_id_token_is_refreshed_before_it_expires_in_both_stores() {
    for store in STORES {
        // The defaults: refresh_after 50 s, id_tokens of 60 s.
        let rig = rig(store, "").await;
        let browser = rig.browser();
        browser.log_in("/").await;
        let (first, first_claims) = bearer_claims(&browser.fetch("/echo").await);
        let cookies = browser.cookies();

        rig.advance(Duration::from_secs(49));
        let (same, _) = bearer_claims(&browser.fetch("/echo").await);
        assert_eq!(same, first, "{store}: not refreshed before refresh_after");
        assert!(rig.audit_events("TokenRefreshed").is_empty(), "{store}");

        rig.advance(Duration::from_secs(2));
        let echo = browser.fetch("/echo").await;
        assert_eq!(echo.status, StatusCode::OK, "{store}");
        let (second, second_claims) = bearer_claims(&echo);
        assert_ne!(second, first, "{store}: refreshed past refresh_after");
        let now = rig.clock_secs();
        assert!(
            first_claims["exp"].as_i64().unwrap() > now,
            "{store}: before it expired"
        );
        assert!(second_claims["exp"].as_i64().unwrap() > now + 50, "{store}");
        let refreshed = rig.audit_events("TokenRefreshed");
        assert_eq!(refreshed.len(), 1, "{store}");
        assert_eq!(refreshed[0]["client_id"], "tessera-proxy");
        assert_eq!(
            browser.cookies() == cookies,
            store == "server",
            "{store}: a handle stays; a sealed session is written again"
        );

        rig.advance(Duration::from_secs(51));
        let (third, third_claims) = bearer_claims(&browser.fetch("/echo").await);
        assert_ne!(third, second, "{store}: and again");
        assert!(
            third_claims["exp"].as_i64().unwrap() > rig.clock_secs(),
            "{store}"
        );
        assert_eq!(rig.audit_events("TokenRefreshed").len(), 2, "{store}");
    }
}

/// Carries `concurrent_requests_past_refresh_after_make_one_refresh_and_none_fails` of the
/// black-box `proxy.rs` (its 1.2 s sleep is the clock advanced), in both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_past_refresh_after_make_one_refresh_and_none_fails_in_both_stores() {
    for store in STORES {
        let rig = rig(store, ", refresh_after: 1s").await;
        let browser = rig.browser();
        browser.log_in("/").await;
        let before = rig.audit_events("TokenRefreshed").len();
        rig.advance(Duration::from_millis(1200));
        let requests = (0..20)
            .map(|_| browser.request(Method::GET, "/echo", false))
            .collect();
        let statuses: Vec<StatusCode> = browser
            .send_at_once(requests)
            .await
            .iter()
            .map(|answer| answer.status)
            .collect();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{store}: {statuses:?}"
        );
        let refreshed = rig.audit_events("TokenRefreshed");
        assert_eq!(
            refreshed.len() - before,
            1,
            "{store}: exactly one refresh reached the provider"
        );
        assert_eq!(refreshed[before]["client_id"], "tessera-proxy");
        assert!(rig.audit_events("RefreshTokenReplayDetected").is_empty());
    }
}

/// Carries the timeouts of the black-box `proxy_chromium.rs` (its 2.5 s and 6.5 s sleeps are
/// the clock advanced): tabs reloading at once past `refresh_after` while one of them fires a
/// burst share one refresh, and after the idle timeout an API call is refused and a page goes
/// through a new login that asks for credentials though the provider's single sign-on is
/// still there (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_past_refresh_after_share_one_refresh_and_an_idle_session_signs_in_with_credentials() {
    let rig = rig("server", ", refresh_after: 2s, idle_timeout: 6s").await;
    let browser = rig.browser();
    assert_eq!(browser.log_in("/page").await, "/page");
    let pages: Vec<String> = (0..4).map(|i| format!("/page?tab={i}")).collect();
    for page in &pages {
        let echo = browser.navigate(page).await;
        assert_eq!(echo.echoed("x-auth-request-user").as_deref(), Some("dev"));
    }
    let refreshed_before = rig.audit_events("TokenRefreshed").len();
    rig.advance(Duration::from_millis(2500));

    // Past refresh_after: every tab reloads at once while the first fires a burst of requests.
    let reloads = pages
        .iter()
        .map(|page| browser.request(Method::GET, page, true));
    let burst = (0..12).map(|i| browser.request(Method::GET, &format!("/echo?i={i}"), false));
    let answers = browser.send_at_once(reloads.chain(burst).collect()).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![StatusCode::OK; 16],
        "no tab is sent to login, no request refused"
    );
    for (i, tab) in answers[..4].iter().enumerate() {
        assert_eq!(tab.json()["path"], pages[i], "tab {i} stays on the app");
        assert_eq!(tab.echoed("x-auth-request-user").as_deref(), Some("dev"));
    }
    let refreshes: Vec<Value> = rig.audit_events("TokenRefreshed")[refreshed_before..]
        .iter()
        .filter(|e| e["client_id"] == "tessera-proxy")
        .cloned()
        .collect();
    assert_eq!(
        refreshes.len(),
        1,
        "exactly one refresh for every tab: {refreshes:?}"
    );
    assert!(rig.audit_events("RefreshTokenReplayDetected").is_empty());

    // Idle past idle_timeout: the next request is not served from the old session.
    let logins_before = rig.audit_events("TokenIssued").len();
    rig.advance(Duration::from_millis(6500));
    let api = browser.fetch("/echo").await;
    assert_eq!(
        api.status,
        StatusCode::UNAUTHORIZED,
        "an API call of an idle session is refused"
    );
    let authorize = authorize_of(&browser, "/after-idle").await;
    assert!(asks_for_credentials(&authorize), "{authorize}");
    assert!(
        browser.provider_still_signed_in(&authorize).await,
        "the provider's single sign-on is alive: it is the proxy that asks for credentials"
    );
    assert_eq!(
        browser.provider_single_sign_on(&authorize).await,
        None,
        "the provider shows its form"
    );
    let callback = browser.provider_login(&authorize).await;
    assert_eq!(browser.finish_login(&callback).await, "/after-idle");
    let echo = browser.navigate("/after-idle").await;
    assert_eq!(echo.echoed("x-auth-request-user").as_deref(), Some("dev"));
    assert_eq!(
        rig.audit_events("TokenIssued").len(),
        logins_before + 1,
        "the page went through a new login"
    );
    let revoked = rig.audit_events_once("SessionRevoked", 1).await;
    assert_eq!(
        revoked.len(),
        1,
        "the idle session was revoked at the provider"
    );

    // Signed in with credentials, the browser owes no more: a session lost otherwise (its
    // cookie cleared) is answered by the single sign-on again.
    browser.set_cookies(BTreeMap::new());
    let authorize = authorize_of(&browser, "/again").await;
    assert!(!asks_for_credentials(&authorize), "{authorize}");
    assert!(
        browser.provider_single_sign_on(&authorize).await.is_some(),
        "a first visit may be answered by the single sign-on"
    );
}

#[tokio::test]
async fn with_sign_out_sso_off_sign_out_leaves_the_providers_single_sign_on() {
    let rig = rig("server", ", sign_out_sso: false").await;
    let browser = rig.browser();
    browser.log_in("/").await;
    let out = browser.sign_out("/oauth2/sign_out?rd=/bye").await;
    assert_eq!(out.status, StatusCode::FOUND);
    assert_eq!(
        out.location(),
        "/bye",
        "straight to rd, not to the provider"
    );
    assert!(clears_session(&out), "{:?}", out.set_cookies());
    let authorize = authorize_of(&browser, "/bye").await;
    assert!(!asks_for_credentials(&authorize), "{authorize}");
    let callback = browser
        .provider_single_sign_on(&authorize)
        .await
        .expect("the provider's single sign-on answers the next visit");
    assert_eq!(browser.finish_login(&callback).await, "/bye");
}

#[tokio::test]
async fn a_request_with_the_cookie_from_before_a_refresh_is_served_from_the_newest_state() {
    let rig = rig("cookie", ", refresh_after: 1s").await;
    let browser = rig.browser();
    browser.log_in("/").await;
    let before_refresh = browser.cookies();
    rig.advance(Duration::from_millis(1200));
    let (refreshed, _) = bearer_claims(&browser.fetch("/echo").await);
    assert_ne!(
        browser.cookies(),
        before_refresh,
        "the refresh rewrote the cookie"
    );

    browser.set_cookies(before_refresh);
    let late = browser.fetch("/echo").await;
    assert_eq!(late.status, StatusCode::OK);
    let (served, _) = bearer_claims(&late);
    assert_eq!(served, refreshed, "the newest tokens, not the cookie's");
    assert_eq!(
        rig.audit_events("TokenRefreshed").len(),
        1,
        "no second refresh"
    );
    assert!(rig.audit_events("RefreshTokenReplayDetected").is_empty());
}

/// Behind nginx's `auth_request` the 401 of `/oauth2/auth` reaches nginx, not the browser: its
/// cookies (the clearing, the demand for credentials) are lost, and the browser comes to
/// `/oauth2/sign_in` with the dead session's cookie.
#[tokio::test]
async fn a_session_that_timed_out_behind_auth_request_signs_in_with_credentials() {
    let rig = rig("server", ", idle_timeout: 2s").await;
    let browser = rig.browser();
    browser.log_in("/").await;
    rig.advance(Duration::from_secs(3));
    let held = browser.cookies();
    let auth = browser.fetch("/oauth2/auth").await;
    assert_eq!(auth.status, StatusCode::UNAUTHORIZED);
    browser.set_cookies(held);
    let sign_in = browser.navigate("/oauth2/sign_in").await;
    assert_eq!(sign_in.status, StatusCode::FOUND, "{}", sign_in.text());
    assert!(
        asks_for_credentials(&sign_in.location()),
        "{}",
        sign_in.location()
    );
    assert!(clears_session(&sign_in), "{:?}", sign_in.set_cookies());
}
