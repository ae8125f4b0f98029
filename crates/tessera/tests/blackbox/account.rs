//! Issue 13's account page as a person meets it, in real headless Chromium: the same person
//! holds a kubectl session (`tessera login`, its token cache used by `tessera credential`) and a
//! proxy session in the browser. The page lists both; ending the kubectl one leaves the browser's
//! proxy session serving, and "Sign out everywhere" ends both. Then the way in for a person of an
//! upstream OpenID Connect provider, with a cookie-jar client as the browser.

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::kubectl::{Home, TTL, assert_one_clear_error, logged_in, output, sleep_until_wall};
use crate::proxy::start_proxy;
use crate::support::{PASSWORD, Server};
use crate::upstream::Upstream;

/// A person signed in twice: kubectl in `home`, and the proxy in `browser`.
struct Person {
    home: std::sync::Arc<Home>,
    browser: Browser,
    /// The proxy's address.
    proxy: String,
}

/// Logs `dev` in with `tessera login`, then through the proxy in Chromium.
async fn signed_in_twice(server: &Server) -> Person {
    let home = Home::new();
    logged_in(server, &home, &[]).await;
    let proxy = server
        .proxy
        .clone()
        .expect("the proxy announces its address");
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    browser.goto(&format!("{proxy}/page")).await;
    browser
        .fill_and_submit(&[("username", "dev"), ("password", PASSWORD)])
        .await;
    assert_eq!(browser.current_url().await, format!("{proxy}/page"));
    Person {
        home,
        browser,
        proxy,
    }
}

/// The sessions the account page lists: id, client, and whether started from this browser.
async fn rows(browser: &Browser) -> Vec<Value> {
    let rows = browser
        .run_js(
            "return [...document.querySelectorAll('section.session')].map(s => ({
               id: s.dataset.session,
               client: s.querySelector('.client').textContent,
               here: s.classList.contains('this-browser'),
             }));",
            vec![],
        )
        .await;
    rows.as_array().cloned().unwrap_or_default()
}

/// Polls the page until `script` returns true (a form's answer has loaded); fails after ten
/// seconds, a bound for a stuck page rather than a timing assertion.
async fn until(browser: &Browser, script: &str) {
    for _ in 0..100 {
        if browser.run_js(script, vec![]).await == json!(true) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the page never got there: {}", browser.body_text().await);
}

/// Waits until the cached id_token of `home` has expired, so `tessera credential` refreshes.
async fn past_the_cached_token(home: &Home) {
    let expires_at = home.cache_entry()["expires_at"].as_i64().unwrap();
    sleep_until_wall(expires_at * 1000 + 50).await;
}

/// An echo of the upstream behind the proxy, as the browser shows it.
async fn served_user(browser: &Browser, proxy: &str, path: &str) -> Value {
    browser.goto(&format!("{proxy}{path}")).await;
    let url = browser.current_url().await;
    assert!(
        url.starts_with(proxy),
        "served by the proxy, not a login: {url}"
    );
    let echo: Value = serde_json::from_str(&browser.body_text().await).unwrap();
    echo["headers"]["x-auth-request-user"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_ends_the_kubectl_session_on_the_account_page_and_the_proxy_session_lives() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[TTL]).await;
    let person = signed_in_twice(&server).await;
    let browser = &person.browser;

    browser.goto(&server.url("/account")).await;
    assert_eq!(
        browser.run_js("return document.title", vec![]).await,
        "Your sessions · tessera"
    );
    let listed = rows(browser).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let kubectl: Vec<&Value> = listed
        .iter()
        .filter(|r| r["client"] == "kubernetes")
        .collect();
    let proxy: Vec<&Value> = listed
        .iter()
        .filter(|r| r["client"] != "kubernetes")
        .collect();
    assert_eq!((kubectl.len(), proxy.len()), (1, 1), "{listed:?}");
    assert_eq!(kubectl[0]["here"], false, "kubectl signed in elsewhere");
    assert_eq!(
        proxy[0]["here"], true,
        "the proxy signed in from this browser"
    );
    let kubectl_id = kubectl[0]["id"].as_str().unwrap().to_owned();

    browser
        .run_js(
            "document.querySelector(`section.session[data-session='${arguments[0]}'] button`).click();",
            vec![json!(kubectl_id)],
        )
        .await;
    until(
        browser,
        "return document.readyState === 'complete' && document.querySelectorAll('section.session').length === 1",
    )
    .await;
    let left = rows(browser).await;
    assert_eq!(
        left[0]["here"], true,
        "the proxy's session is left: {left:?}"
    );
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["reason"], "user_ended");
    assert_eq!(revoked[0]["session_id"], kubectl_id.as_str());

    past_the_cached_token(&person.home).await;
    let out = output(person.home.credential(&server)).await;
    let said = assert_one_clear_error(&out, &["tessera login"]);
    assert!(said.contains("session"), "{said}");
    assert_eq!(served_user(browser, &person.proxy, "/after").await, "dev");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_out_everywhere_from_the_account_page_ending_kubectl_and_the_proxy() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[TTL]).await;
    let person = signed_in_twice(&server).await;
    let browser = &person.browser;
    assert!(
        output(person.home.credential(&server))
            .await
            .status
            .success()
    );

    browser.goto(&server.url("/account")).await;
    assert_eq!(rows(browser).await.len(), 2);
    browser
        .run_js(
            "[...document.querySelectorAll('form button')]
               .find(b => b.textContent === 'Sign out everywhere').click();",
            vec![],
        )
        .await;
    until(
        browser,
        "return document.readyState === 'complete' && document.title.startsWith('Signed out everywhere')",
    )
    .await;
    let reasons: Vec<Value> = server
        .audit_events("SessionRevoked", 2)
        .await
        .into_iter()
        .map(|e| e["reason"].clone())
        .collect();
    assert_eq!(reasons, ["sign_out_everywhere", "sign_out_everywhere"]);

    // The proxy answers a session from memory for up to a second after it last read it
    // (`READ_CACHE_TTL` in proxy/session/server.rs), so an ending made elsewhere (here, at the
    // provider) shows at its first request after that.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    browser.goto(&format!("{}/page", person.proxy)).await;
    let url = browser.current_url().await;
    assert!(url.starts_with(&server.issuer), "to the provider: {url}");
    let form = browser
        .run_js(
            "return document.querySelector('input[type=password]') !== null",
            vec![],
        )
        .await;
    assert_eq!(form, true, "the login form: {}", browser.body_text().await);

    past_the_cached_token(&person.home).await;
    let out = output(person.home.credential(&server)).await;
    assert_one_clear_error(&out, &["tessera login"]);
}

/// The account page's way in for a person of an upstream provider: `/account` sends the browser
/// to the login page, whose button goes upstream and comes back to `/account` (no code, no
/// session of its own); the page then names the directory of the sessions it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_of_an_upstream_provider_signs_in_to_the_account_page_through_its_button() {
    use crate::oidc_connector::{browser, button_to_callback, server_with};
    use crate::oidc_upstream::OidcProvider;
    use crate::support::{AuthParams, code_from, location};

    let upstream = OidcProvider::start().await;
    let server = server_with(&upstream, "5m", "15m").await;
    let (browser, _) = browser(&server, &upstream);
    let account = browser.get(server.url("/account")).send().await.unwrap();
    assert_eq!(account.status(), reqwest::StatusCode::SEE_OTHER);
    let login = location(&account);
    assert_eq!(login, "/login?return_to=account");
    let page = browser.get(server.url(&login)).send().await.unwrap();
    let callback = button_to_callback(&server, &browser, page).await;
    let back = browser.get(&callback).send().await.unwrap();
    assert_eq!(back.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(location(&back), "/account");
    assert!(server.audit_events("TokenIssued", 0).await.is_empty());

    // kubectl's sign-in in the same browser is answered by the SSO session the page made.
    let auth = AuthParams::kubernetes();
    let silent = server.authorize_raw(&browser, &auth.pairs()).await;
    server.exchange(&code_from(&location(&silent)), &auth).await;
    let page = browser.get(server.url("/account")).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Signed in as <strong>okta:alice-0001</strong>"),
        "{html}"
    );
    assert!(
        html.contains("<dt>Signed in with</dt><dd>Okta</dd>"),
        "{html}"
    );
    assert!(html.contains("(signed in from this browser)"), "{html}");
}
