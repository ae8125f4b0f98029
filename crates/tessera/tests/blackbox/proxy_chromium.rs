//! The proxy as a real browser meets it: headless Chromium logs in through the provider's form,
//! keeps the proxy's `Secure; HttpOnly` cookie, loads pages in several tabs at once past
//! `refresh_after` without one of them being logged out, and after the idle timeout is sent back
//! to login.

use std::time::Duration;

use serde_json::Value;

use crate::browser::Browser;
use crate::proxy::start_proxy;
use crate::support::PASSWORD;
use crate::upstream::Upstream;

/// The echo the upstream answered, as the browser shows it.
async fn echoed(browser: &Browser) -> Value {
    let text = browser.body_text().await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an echo page: {text}"))
}

#[tokio::test]
async fn chromium_tabs_past_refresh_after_share_one_refresh_and_an_idle_session_logs_in_again() {
    let upstream = Upstream::start().await;
    let server = start_proxy(
        &upstream,
        &[
            ("TESSERA_PROXY__SESSION__REFRESH_AFTER", "2s"),
            ("TESSERA_PROXY__SESSION__IDLE_TIMEOUT", "6s"),
        ],
    )
    .await;
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
    let refreshed_before = server.audit_events("TokenRefreshed", 0).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Past refresh_after: every tab reloads at once while the first fires a burst of requests.
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
    let refreshed = server
        .audit_events("TokenRefreshed", refreshed_before + 1)
        .await;
    let refreshes: Vec<&Value> = refreshed[refreshed_before..]
        .iter()
        .filter(|e| e["client_id"] == "tessera-proxy")
        .collect();
    assert_eq!(
        refreshes.len(),
        1,
        "exactly one refresh for every tab: {refreshes:?}"
    );
    assert!(
        server
            .audit_events("RefreshTokenReplayDetected", 0)
            .await
            .is_empty()
    );

    // Idle past idle_timeout: the next request is not served from the old session.
    let logins_before = server.audit_events("TokenIssued", 1).await.len();
    tokio::time::sleep(Duration::from_millis(6500)).await;
    browser.switch_to(&tabs[0]).await;
    let status = browser
        .run_js("return fetch('/echo').then(r => r.status)", vec![])
        .await;
    assert_eq!(status, 401, "an API call of an idle session is refused");
    browser.goto(&format!("{base}/after-idle")).await;
    assert_eq!(browser.current_url().await, format!("{base}/after-idle"));
    let logins = server.audit_events("TokenIssued", logins_before + 1).await;
    assert_eq!(
        logins.len(),
        logins_before + 1,
        "the page went through a new login (the provider's SSO answered it)"
    );
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(
        revoked.len(),
        1,
        "the idle session was revoked at the provider"
    );
}
