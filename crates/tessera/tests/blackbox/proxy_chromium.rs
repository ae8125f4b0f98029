//! The proxy as a real browser meets it: headless Chromium logs in through the provider's form,
//! keeps the proxy's `Secure; HttpOnly` cookie, loads pages in several tabs at once without one
//! of them being logged out, and once its session is lost (its cookie cleared) is sent back
//! through a login that the provider's single sign-on answers. A session that ends by the idle
//! timeout or a sign-out is different: the next visit asks for credentials (issue 13). What the
//! timeouts do in detail (one refresh for every tab past `refresh_after`, the idle and absolute
//! timeouts ending the session and revoking it at the provider) is proven in-process with the
//! clock advanced (`tests/in_process/proxy.rs`).

use std::time::Duration;

use serde_json::Value;

use crate::browser::Browser;
use crate::proxy::start_proxy;
use crate::support::{PASSWORD, Server};
use crate::upstream::Upstream;

/// The echo the upstream answered, as the browser shows it.
async fn echoed(browser: &Browser) -> Value {
    let text = browser.body_text().await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an echo page: {text}"))
}

#[tokio::test]
async fn chromium_tabs_share_one_session_and_a_lost_session_logs_in_again_through_sso() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;

    browser.goto(&format!("{base}/page")).await;
    assert!(
        browser.current_url().await.starts_with(&server.issuer),
        "an anonymous page goes to the provider's login"
    );
    browser
        .fill_and_submit(&[("username", "dev"), ("password", PASSWORD)])
        .await;
    assert_eq!(browser.current_url().await, format!("{base}/page"));
    assert_eq!(
        echoed(&browser).await["headers"]["x-auth-request-user"][0],
        "dev"
    );
    let cookies = browser.cookies().await;
    assert!(
        cookies.iter().any(|(name, _)| name == "_tessera_proxy"),
        "Chromium keeps the Secure cookie: {cookies:?}"
    );

    let mut tabs = browser.tabs().await;
    for i in 1..4 {
        let tab = browser.new_tab().await;
        browser.switch_to(&tab).await;
        browser.goto(&format!("{base}/page?tab={i}")).await;
        tabs.push(tab);
    }
    // Every tab reloads at once while the first fires a burst of requests.
    for tab in &tabs {
        browser.switch_to(tab).await;
        browser
            .run_js(
                "setTimeout(() => location.reload(), 20); return true",
                vec![],
            )
            .await;
    }
    browser.switch_to(&tabs[0]).await;
    let burst = browser
        .run_js(
            "return Promise.all([...Array(12).keys()].map(i =>
                 fetch('/echo?i=' + i).then(r => r.status)))",
            vec![],
        )
        .await;
    assert_eq!(
        burst,
        serde_json::json!(vec![200; 12]),
        "no request of the burst is refused"
    );
    for (i, tab) in tabs.iter().enumerate() {
        browser.switch_to(tab).await;
        let url = browser.current_url().await;
        assert!(
            url.starts_with(&base),
            "tab {i} stays on the app, not the login: {url}"
        );
        assert_eq!(
            echoed(&browser).await["headers"]["x-auth-request-user"][0],
            "dev"
        );
    }
    assert!(
        server
            .audit_events("RefreshTokenReplayDetected", 0)
            .await
            .is_empty()
    );

    // The session's cookie lost (not timed out, not signed out of): the next request is not
    // served from it, and the provider's single sign-on signs the browser in again.
    let logins_before = server.audit_events("TokenIssued", 1).await.len();
    browser.switch_to(&tabs[0]).await;
    browser.delete_cookie("_tessera_proxy").await;
    let status = browser
        .run_js("return fetch('/echo').then(r => r.status)", vec![])
        .await;
    assert_eq!(status, 401, "an API call without a session is refused");
    browser.goto(&format!("{base}/after-login")).await;
    assert_eq!(browser.current_url().await, format!("{base}/after-login"));
    let logins = server.audit_events("TokenIssued", logins_before + 1).await;
    assert_eq!(
        logins.len(),
        logins_before + 1,
        "the page went through a new login (the provider's SSO answered it)"
    );
}

/// Signs in through the proxy at `base` + `path` with the provider's form; checks the
/// browser is back on the page.
async fn sign_in(browser: &Browser, server: &Server, base: &str, path: &str) {
    browser.goto(&format!("{base}{path}")).await;
    assert_login_form(browser, server).await;
    browser
        .fill_and_submit(&[("username", "dev"), ("password", PASSWORD)])
        .await;
    assert_eq!(browser.current_url().await, format!("{base}{path}"));
    assert_eq!(
        echoed(browser).await["headers"]["x-auth-request-user"][0],
        "dev"
    );
}

/// The current tab shows the provider's login form: the person is asked for credentials.
async fn assert_login_form(browser: &Browser, server: &Server) {
    let url = browser.current_url().await;
    assert!(
        url.starts_with(&server.issuer),
        "not at the provider: {url}"
    );
    let text = browser.body_text().await;
    assert!(text.contains("Sign in"), "no login form at {url}: {text}");
    let password = browser
        .run_js(
            "return document.querySelectorAll('input[name=password]').length",
            vec![],
        )
        .await;
    assert_eq!(password, 1, "the form asks for a password: {text}");
}

/// Opens `/oauth2/sign_out` and presses the confirmation page's button.
async fn sign_out(browser: &Browser, base: &str) {
    browser.goto(&format!("{base}/oauth2/sign_out")).await;
    assert!(
        browser.body_text().await.contains("Sign out of this site?"),
        "{}",
        browser.body_text().await
    );
    browser
        .run_js(
            "document.querySelector('form button').click(); return true",
            vec![],
        )
        .await;
}

#[tokio::test]
async fn chromium_signs_in_with_credentials_again_after_the_idle_timeout() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[("TESSERA_PROXY__SESSION__IDLE_TIMEOUT", "2s")]).await;
    let base = server.proxy.clone().unwrap();
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    sign_in(&browser, &server, &base, "/page").await;

    // Idle past idle_timeout (the provider's own SSO idle timeout, 30 minutes, is far off).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    browser.goto(&format!("{base}/after-idle")).await;
    assert_login_form(&browser, &server).await;
    browser
        .fill_and_submit(&[("username", "dev"), ("password", PASSWORD)])
        .await;
    assert_eq!(browser.current_url().await, format!("{base}/after-idle"));
    assert_eq!(
        echoed(&browser).await["headers"]["x-auth-request-user"][0],
        "dev"
    );
}

#[tokio::test]
async fn chromium_is_asked_for_credentials_after_signing_out() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    sign_in(&browser, &server, &base, "/page").await;

    sign_out(&browser, &base).await;
    // Through the provider's logout (which asks nothing) to `rd`, `/`, which needs a session.
    assert_login_form(&browser, &server).await;
    let cookies = browser.cookies().await;
    assert!(
        !cookies.iter().any(|(name, _)| name == "tessera_sso"),
        "the provider's single sign-on cookie is gone: {cookies:?}"
    );

    // Another application of the same provider asks for credentials too: the SSO has ended.
    browser
        .goto(&server.url(
            "/authorize?client_id=demo&response_type=code&scope=openid\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A8000%2Fcallback&state=xyz",
        ))
        .await;
    assert_login_form(&browser, &server).await;
    browser.goto(&format!("{base}/again")).await;
    assert_login_form(&browser, &server).await;
    browser
        .fill_and_submit(&[("username", "dev"), ("password", PASSWORD)])
        .await;
    assert_eq!(browser.current_url().await, format!("{base}/again"));
}

#[tokio::test]
async fn chromium_signs_in_silently_after_signing_out_with_sign_out_sso_off() {
    let upstream = Upstream::start().await;
    let off = [("TESSERA_PROXY__SESSION__SIGN_OUT_SSO", "false")];
    let server = start_proxy(&upstream, &off).await;
    let base = server.proxy.clone().unwrap();
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    sign_in(&browser, &server, &base, "/page").await;

    sign_out(&browser, &base).await;
    // To `rd`, `/`, which the provider's single sign-on signs in again without asking.
    assert_eq!(browser.current_url().await, format!("{base}/"));
    assert_eq!(
        echoed(&browser).await["headers"]["x-auth-request-user"][0],
        "dev"
    );
    assert!(
        !server
            .audit_events("SessionRevoked", 1)
            .await
            .iter()
            .any(|e| e["reason"] == "logout"),
        "nothing ended at the provider but the proxy's own session"
    );
}
