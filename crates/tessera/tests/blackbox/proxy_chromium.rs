//! The proxy as a real browser meets it: headless Chromium logs in through the provider's form,
//! keeps the proxy's `Secure; HttpOnly` cookie, loads pages in several tabs at once without one
//! of them being logged out, and once its session is gone (as the idle timeout ends it) is sent
//! back through a login that the provider's single sign-on answers. What the timeouts do to
//! this scenario (one refresh for every tab past `refresh_after`, the idle timeout ending the
//! session and revoking it at the provider) is proven in-process with the clock advanced
//! (`tests/in_process/proxy.rs`), without the sleeps it once took here.

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

    // The session gone, as after the idle timeout: the next request is not served from it.
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
