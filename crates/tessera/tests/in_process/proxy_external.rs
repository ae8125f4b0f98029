//! The proxy in front of an external OpenID Connect provider (this rig's provider, reached over
//! loopback HTTP as client `rp`, its id_tokens verified against its JWKS), the session sealed
//! into the cookie, the clock advanced instead of slept.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use tessera_core::seal::{self, Sealer};

use crate::rig::{Browser, COOKIE_KEY, PREVIOUS_COOKIE_KEY, Rig, Setup};

/// The session cookie's name, which sealed sessions are bound to.
const NAME: &str = "_tessera_proxy";

/// The session chunks the browser holds, by name.
fn chunks(browser: &Browser<'_>) -> Vec<(String, String)> {
    browser
        .cookies()
        .into_iter()
        .filter(|(name, _)| name.starts_with(NAME) && !name.contains("_csrf_"))
        .collect()
}

/// The session the browser's chunks seal, opened under `key` alone.
fn open(browser: &Browser<'_>, key: [u8; 32]) -> Option<Vec<u8>> {
    let cookies = chunks(browser);
    let pairs: Vec<(&str, &str)> = cookies
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sealed = seal::join(NAME, &pairs, seal::MAX_CHUNKS)?;
    Sealer::new(key, Vec::new())
        .open(&sealed, NAME.as_bytes())
        .ok()
}

/// Seals the browser's session again under the previous key, as a cookie written before the
/// key rotation would be.
fn seal_as_before_the_rotation(browser: &Browser<'_>) {
    let plain = open(browser, COOKIE_KEY).expect("sealed under the current key");
    let sealed = Sealer::new(PREVIOUS_COOKIE_KEY, Vec::new())
        .seal(&plain, NAME.as_bytes())
        .unwrap();
    browser.set_cookies(
        seal::split(NAME, &sealed, seal::MAX_PAIR_LEN)
            .into_iter()
            .collect(),
    );
}

/// Carries the refresh of
/// `a_cookie_session_from_an_external_provider_is_chunked_refreshed_and_revoked_at_sign_out`
/// of the black-box `proxy_external.rs` (its 1.2 s sleep is the clock advanced): eight
/// requests past `refresh_after` make one refresh at the external provider, which replaces
/// every chunk of a cookie sealed before a key rotation with chunks sealed under the current
/// key, and the new chunks join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_cookie_session_is_refreshed_once_at_an_external_provider_and_rewritten_whole() {
    let rig = Rig::start(Setup {
        session: "{store: cookie, refresh_after: 1s}".into(),
        extra_groups: 218,
        external: true,
    })
    .await;
    let browser = rig.browser();
    assert_eq!(browser.log_in("/board").await, "/board");
    let names: Vec<String> = chunks(&browser).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["_tessera_proxy_0", "_tessera_proxy_1", "_tessera_proxy_2"]
    );
    seal_as_before_the_rotation(&browser);
    let first = chunks(&browser);
    assert_eq!(first.len(), 3);
    let echo = browser.fetch("/echo").await;
    assert_eq!(echo.status, StatusCode::OK, "sealed under the previous key");
    let groups = echo.echoed("x-auth-request-groups").unwrap();
    assert_eq!(groups.split(',').count(), 220, "the chunks were joined");

    let refreshed_before = rig.audit_events("TokenRefreshed").len();
    rig.advance(Duration::from_millis(1200));
    let requests = (0..8)
        .map(|_| browser.request(Method::GET, "/echo", false))
        .collect();
    for answer in browser.send_at_once(requests).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    let refreshed = rig.audit_events("TokenRefreshed");
    assert_eq!(
        refreshed.len() - refreshed_before,
        1,
        "one refresh for eight requests"
    );
    assert_eq!(refreshed[refreshed_before]["client_id"], "rp");
    let second = chunks(&browser);
    assert_eq!(second.len(), 3);
    assert_ne!(first, second, "the refresh rewrote the cookie");
    assert!(
        open(&browser, COOKIE_KEY).is_some(),
        "under the current key"
    );
    assert_eq!(
        browser.fetch("/echo").await.status,
        StatusCode::OK,
        "the new chunks join"
    );
}
