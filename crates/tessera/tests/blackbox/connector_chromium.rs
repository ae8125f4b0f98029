//! Issue 16's login page as a person meets it, in real headless Chromium: the company's title and
//! logo (`web.title`, `web.logo`) above one form per connector, a sign-in through the directory's
//! form, one through the break-glass form in a fresh browser, and one through an upstream
//! OpenID Connect provider's button.

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::ldap::{ALICE_PASSWORD, Directory};
use crate::ldap_login::server_with_env;
use crate::oidc_upstream::OidcProvider;
use crate::support::{AuthParams, PASSWORD, Server, claims, code_from, query_param, text};

/// A title with markup in it: the page must show it as text.
const TITLE: &str = "Example & Co <Corp>";

/// A small SVG logo, 120×40.
const LOGO: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"120\" height=\"40\">\
                    <rect width=\"120\" height=\"40\" fill=\"#0a6\"/></svg>";

/// The login page of an authorization request of kubectl's client, without `connector_id`.
fn login_url(server: &Server, auth: &AuthParams<'_>) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(auth.pairs())
        .finish();
    server.url(&format!("/authorize?{query}"))
}

/// What the page shows of the theme and the choice: `document.title`, the brand line, whether
/// the logo loaded (an image the CSP blocked has no natural size), and each form's heading.
async fn page_facts(browser: &Browser) -> Value {
    browser
        .run_js(
            "const logo = document.querySelector('header img.logo');
             return {
               title: document.title,
               brand: document.querySelector('header .brand').textContent,
               logo: logo !== null && logo.complete && logo.naturalWidth === 120,
               injected: document.querySelector('Corp') !== null,
               forms: [...document.querySelectorAll('section h2')].map(h => h.textContent),
             };",
            vec![],
        )
        .await
}

/// Exchanges the code the browser came back with: the id_token's claims.
async fn id_token_of(server: &Server, browser: &Browser, auth: &AuthParams<'_>) -> Value {
    let back = browser.current_url().await;
    assert!(
        back.starts_with(auth.redirect_uri),
        "the browser ends at the client's callback: {back}"
    );
    assert_eq!(query_param(&back, "state").as_deref(), Some(auth.state));
    let tokens = server.exchange(&code_from(&back), auth).await;
    claims(&text(&tokens, "id_token"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_company_login_page_and_signs_in_through_the_directory_or_break_glass() {
    let directory = Directory::start().await;
    let assets = tempfile::tempdir().unwrap();
    let logo = assets.path().join("logo.svg");
    std::fs::write(&logo, LOGO).unwrap();
    let logo = logo.display().to_string();
    let env = [("TESSERA_WEB__TITLE", TITLE), ("TESSERA_WEB__LOGO", &logo)];
    let server = server_with_env(&directory, "5m", "15m", &env).await;
    let auth = AuthParams::kubernetes();
    let expected_forms = json!(["Corporate LDAP", "Corporate AD", "Break-glass account"]);

    // Alice, through the directory's form.
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    browser.goto(&login_url(&server, &auth)).await;
    let page = page_facts(&browser).await;
    assert_eq!(page["title"], format!("Sign in · {TITLE}"), "{page}");
    assert_eq!(page["brand"], TITLE, "{page}");
    assert_eq!(
        page["logo"], true,
        "the logo loads under the page's CSP: {page}"
    );
    assert_eq!(
        page["injected"], false,
        "the title is text, not markup: {page}"
    );
    assert_eq!(page["forms"], expected_forms, "{page}");
    browser
        .fill_and_submit_within(
            "section:nth-of-type(1)",
            &[("username", "alice"), ("password", ALICE_PASSWORD)],
        )
        .await;
    let alice = id_token_of(&server, &browser, &auth).await;
    assert!(
        alice["sub"].as_str().unwrap().starts_with("corp:"),
        "{alice}"
    );
    assert_eq!(alice["preferred_username"], "alice");
    assert_eq!(alice["groups"], json!(["k8s-admins", "k8s-dev"]), "{alice}");
    drop(browser);

    // dev, through the break-glass form of the same page, in a browser without alice's SSO.
    let browser = Browser::start(Some(&server.dir.path().join("server.pem"))).await;
    browser.goto(&login_url(&server, &auth)).await;
    assert_eq!(page_facts(&browser).await["forms"], expected_forms);
    browser
        .fill_and_submit_within(
            "section:nth-of-type(3)",
            &[("username", "dev"), ("password", PASSWORD)],
        )
        .await;
    let dev = id_token_of(&server, &browser, &auth).await;
    assert_eq!(dev["preferred_username"], "dev", "{dev}");
    assert!(!dev["sub"].as_str().unwrap().starts_with("corp:"), "{dev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_through_the_upstream_providers_button() {
    let upstream = OidcProvider::start().await;
    let server = crate::oidc_connector::server_with(&upstream, "5m", "15m").await;
    let auth = AuthParams::kubernetes();
    let upstream_cert = upstream.ca_file().with_file_name("server.pem");
    let tessera_cert = server.dir.path().join("server.pem");
    let browser = Browser::start_trusting(&[&tessera_cert, &upstream_cert]).await;
    browser.goto(&login_url(&server, &auth)).await;
    let buttons = browser
        .run_js(
            "return [...document.querySelectorAll('form button')].map(b => b.textContent);",
            vec![],
        )
        .await;
    assert!(
        buttons.to_string().contains("Sign in with Okta"),
        "{buttons}"
    );
    // Press the upstream's button: to the upstream, which signs alice in at once, and back.
    browser
        .run_js(
            "[...document.querySelectorAll('form button')]
               .find(b => b.textContent.includes('Okta')).click();",
            vec![],
        )
        .await;
    for _ in 0..100 {
        if browser.current_url().await.starts_with(auth.redirect_uri) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let alice = id_token_of(&server, &browser, &auth).await;
    assert_eq!(alice["sub"], "okta:alice-0001", "{alice}");
    assert_eq!(alice["preferred_username"], "alice");
}
