//! People from a real upstream OpenID Connect provider ([`OidcProvider`], node's
//! `oidc-provider`): the login page's button, the whole browser-less sign-in through tessera to
//! the upstream and back, the subject and mapped groups in tessera's id_token, re-validation by
//! the upstream refresh token, and the upstream's refusals, bad state, replayed codes and forged
//! id_tokens, each a clear page that starts no session.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::cluster::free_port;
use crate::oidc_upstream::{CLIENT_SECRET, OidcProvider};
use crate::support::{
    AuthParams, Server, claims, client_builder, code_from, hidden_fields, location, text,
};

/// `tessera serve --dev` with an `oidc` connector `okta` at `upstream` and the users file.
pub(crate) async fn server_with(
    upstream: &OidcProvider,
    revalidate: &str,
    staleness: &str,
) -> Server {
    let server = server_at(upstream, &upstream.issuer, revalidate, staleness).await;
    upstream.register(&server, "okta").await;
    server
}

/// The same, with the connector's issuer `issuer` (the upstream's CA and secret still).
async fn server_at(
    upstream: &OidcProvider,
    issuer: &str,
    revalidate: &str,
    staleness: &str,
) -> Server {
    // Short enough for a stalled upstream to fail a check well inside revalidate_max_staleness.
    let timeout = "1s";
    let dir = Server::start().await.stop();
    let config = dir.path().join("tessera.yaml");
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&format!(
        "connectors:\n\
         \x20 - id: okta\n    type: oidc\n    name: Okta\n    issuer: {issuer}\n\
         \x20   client_id: tessera\n    client_secret_file: {secret}\n\
         \x20   certificate_authority: {ca}\n\
         \x20   timeout: {timeout}\n\
         \x20   revalidate_interval: {revalidate}\n    revalidate_max_staleness: {staleness}\n\
         \x20 - id: local\n    type: local\n    name: Break-glass account\n\
         groups:\n  include: [\"^k8s-\", \"^cluster-admins$\"]\n  rename: {{\"Okta Admins\": cluster-admins}}\n",
        secret = upstream.client_secret_file().display(),
        ca = upstream.ca_file().display(),
    ));
    std::fs::write(&config, yaml).unwrap();
    Server::start_in(dir, &[]).await
}

/// A browser trusting tessera's and the upstream's CAs, with a cookie jar the test can read.
pub(crate) fn browser(
    server: &Server,
    upstream: &OidcProvider,
) -> (reqwest::Client, Arc<reqwest::cookie::Jar>) {
    let both = server.dir.path().join("both-cas.pem");
    let mut pem = std::fs::read(&server.ca).unwrap();
    pem.extend(std::fs::read(upstream.ca_file()).unwrap());
    std::fs::write(&both, pem).unwrap();
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = client_builder(&both)
        .cookie_provider(Arc::clone(&jar))
        .build()
        .unwrap();
    (client, jar)
}

/// Shows tessera's login page, presses the upstream's button, and follows the upstream's
/// redirects (its sign-in and consent finish at once) until it sends the browser back to
/// tessera: the callback URL, not yet visited.
async fn to_callback(server: &Server, browser: &reqwest::Client, auth: &AuthParams<'_>) -> String {
    let page = server.authorize_raw(browser, &auth.pairs()).await;
    button_to_callback(server, browser, page).await
}

/// [`to_callback`] from a login `page` already loaded.
pub(crate) async fn button_to_callback(
    server: &Server,
    browser: &reqwest::Client,
    page: reqwest::Response,
) -> String {
    assert_eq!(page.status(), StatusCode::OK, "the login page is shown");
    let html = page.text().await.unwrap();
    let start = server.url("/connector/okta/start");
    let action = format!("action=\"{start}\"");
    let action_path = format!("action=\"{}\"", Url::parse(&start).unwrap().path());
    let form = html
        .split("<form")
        .find(|f| f.contains(&action) || f.contains(&action_path))
        .unwrap_or_else(|| panic!("a button form for okta in {html}"));
    assert!(form.contains("Sign in with Okta"), "{form}");
    assert!(
        !form.contains("type=\"password\""),
        "a button, not a password form"
    );
    let started = browser
        .post(&start)
        .form(&hidden_fields(form))
        .send()
        .await
        .unwrap();
    assert_eq!(
        started.status(),
        StatusCode::SEE_OTHER,
        "the button sends the browser upstream"
    );
    let mut url = location(&started);
    for _ in 0..10 {
        if url.starts_with(&server.issuer) {
            return url;
        }
        let answer = browser.get(&url).send().await.unwrap();
        assert!(
            answer.status().is_redirection(),
            "{url} answered {}: {}",
            answer.status(),
            answer.text().await.unwrap_or_default()
        );
        url = Url::parse(&url)
            .unwrap()
            .join(&location(&answer))
            .unwrap()
            .to_string();
    }
    panic!("the upstream never sent the browser back to tessera");
}

/// A whole sign-in through the upstream, then the code exchange: the token response.
async fn tokens(server: &Server, upstream: &OidcProvider) -> Value {
    let (browser, _) = browser(server, upstream);
    let auth = AuthParams::kubernetes();
    let callback = to_callback(server, &browser, &auth).await;
    let answer = browser.get(&callback).send().await.unwrap();
    assert!(answer.status().is_redirection(), "{}", answer.status());
    let code = code_from(&location(&answer));
    server.exchange(&code, &auth).await
}

fn groups(id_token: &Value) -> Vec<String> {
    let list = id_token["groups"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|g| g.as_str().unwrap().to_owned())
        .collect()
}

/// The page tessera answered, and that it says `sentence`.
async fn page_says(answer: reqwest::Response, status: StatusCode, sentence: &str) {
    assert_eq!(answer.status(), status);
    let html = answer.text().await.unwrap();
    assert!(html.contains(sentence), "{sentence:?} in {html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_at_the_upstream_and_tessera_names_them_by_connector_and_upstream_subject()
 {
    let upstream = OidcProvider::start().await;
    let server = server_with(&upstream, "5m", "15m").await;

    let alice = tokens(&server, &upstream).await;
    let id = claims(&text(&alice, "id_token"));
    assert_eq!(id["sub"], "okta:alice-0001");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["email"], "alice@corp.example");
    assert_eq!(
        groups(&id),
        ["k8s-dev", "cluster-admins"],
        "staff is not included; Okta Admins is renamed"
    );

    // Another person at the same upstream is another subject.
    upstream.next_sign_in_as("bob").await;
    let bob = tokens(&server, &upstream).await;
    let id = claims(&text(&bob, "id_token"));
    assert_eq!(id["sub"], "okta:bob-0001");
    assert_eq!(groups(&id), ["k8s-ops"]);

    // `connector_id=okta` makes the choice: straight to the upstream, without a page.
    let (browser, _) = browser(&server, &upstream);
    let auth = AuthParams::kubernetes();
    let mut query = auth.pairs();
    query.push(("connector_id", "okta".into()));
    let direct = server.authorize_raw(&browser, &query).await;
    assert_eq!(direct.status(), StatusCode::SEE_OTHER);
    let to = location(&direct);
    assert!(
        to.starts_with(&format!("{}/auth?", upstream.issuer)),
        "{to}"
    );
    let redirect_uri = crate::support::query_param(&to, "redirect_uri").unwrap();
    assert_eq!(redirect_uri, server.url("/callback/okta"));
    assert_eq!(
        crate::support::query_param(&to, "code_challenge_method").unwrap(),
        "S256"
    );

    let logins = server.audit_events("LoginSucceeded", 2).await;
    assert_eq!(logins[0]["connector_id"], "okta");
    assert_eq!(logins[0]["uid"], "okta:alice-0001");
    let written = std::fs::read_to_string(server.dir.path().join("audit.log")).unwrap();
    assert!(!written.contains(CLIENT_SECRET));
    assert!(!server.log().iter().any(|l| l.contains(CLIENT_SECRET)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_past_revalidate_interval_redeem_the_upstream_token_until_the_upstream_revokes_it()
 {
    let upstream = OidcProvider::start().await;
    let server = server_with(&upstream, "1s", "10s").await;
    let alice = tokens(&server, &upstream).await;

    // Twice past the interval: the second redeems the token the first got in rotation, and its
    // answer has no id_token, so the claims of the first stand.
    let mut refresh_token = text(&alice, "refresh_token");
    for round in 1..=2 {
        if round == 2 {
            upstream.drop_next_id_token().await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, refreshed) = server.refresh(&refresh_token).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {refreshed}");
        assert_eq!(
            claims(&text(&refreshed, "id_token"))["sub"],
            "okta:alice-0001"
        );
        let checked = server.audit_events("UpstreamRevalidated", round).await;
        assert_eq!(checked[round - 1]["connector_id"], "okta");
        refresh_token = text(&refreshed, "refresh_token");
    }

    // The upstream ends alice's grant: the next refresh past the interval ends the session.
    upstream.revoke_grants_of("alice").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = server.refresh(&refresh_token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let failed = server.audit_events("UpstreamRevalidationFailed", 1).await;
    assert_eq!(failed[0]["reason"], "upstream_refresh_rejected");
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["reason"], "upstream_revalidation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_bad_state_replayed_codes_and_forged_id_tokens_each_show_a_page_and_sign_nobody_in()
 {
    let upstream = OidcProvider::start().await;
    let server = server_with(&upstream, "5m", "15m").await;
    let auth = AuthParams::kubernetes();

    // The upstream refuses.
    upstream.deny_next_sign_in().await;
    let (browser_a, _) = browser(&server, &upstream);
    let callback = to_callback(&server, &browser_a, &auth).await;
    assert!(callback.contains("error=access_denied"), "{callback}");
    let answer = browser_a.get(&callback).send().await.unwrap();
    page_says(
        answer,
        StatusCode::FORBIDDEN,
        "Okta refused the sign-in (access_denied)",
    )
    .await;

    // A state that is not this browser's login, and a callback in a browser that started none.
    let (browser_b, _) = browser(&server, &upstream);
    let callback = to_callback(&server, &browser_b, &auth).await;
    let state = crate::support::query_param(&callback, "state").unwrap();
    let wrong = callback.replace(&state, "not-the-state-of-this-login");
    let answer = browser_b.get(&wrong).send().await.unwrap();
    page_says(
        answer,
        StatusCode::BAD_REQUEST,
        "not started in this browser",
    )
    .await;
    let (stranger, _) = browser(&server, &upstream);
    let answer = stranger.get(&callback).send().await.unwrap();
    page_says(
        answer,
        StatusCode::BAD_REQUEST,
        "not started in this browser",
    )
    .await;

    // A code presented twice, with the login cookie copied back: the upstream refuses it.
    let (browser_c, jar) = browser(&server, &upstream);
    let callback = to_callback(&server, &browser_c, &auth).await;
    let issuer = Url::parse(&server.issuer).unwrap();
    let login_cookie = reqwest::cookie::CookieStore::cookies(jar.as_ref(), &issuer)
        .and_then(|h| {
            h.to_str()
                .unwrap()
                .split("; ")
                .find(|c| c.starts_with("tessera_upstream_login="))
                .map(str::to_owned)
        })
        .expect("the login cookie is set");
    let first = browser_c.get(&callback).send().await.unwrap();
    assert!(first.status().is_redirection(), "{}", first.status());
    jar.add_cookie_str(&format!("{login_cookie}; Path=/"), &issuer);
    let replayed = browser_c.get(&callback).send().await.unwrap();
    page_says(replayed, StatusCode::BAD_REQUEST, "could not be accepted").await;

    // id_tokens with another audience, another nonce, or no signature.
    for how in ["aud", "nonce", "none"] {
        upstream.forge_next_id_token(how).await;
        let (browser, _) = browser(&server, &upstream);
        let callback = to_callback(&server, &browser, &auth).await;
        let answer = browser.get(&callback).send().await.unwrap();
        page_says(answer, StatusCode::BAD_REQUEST, "could not be accepted").await;
        assert!(!server.signed_in(&browser).await, "{how}: no session");
    }

    // The audit log is written behind the answers: wait for every failure's line.
    let failed = server.audit_events("LoginFailed", 7).await;
    let audit = server.audit();
    let succeeded = audit
        .iter()
        .filter(|l| l["event"] == "LoginSucceeded")
        .count();
    assert_eq!(
        succeeded, 1,
        "only the first use of the replayed code: {audit:?}"
    );
    let reasons: Vec<&str> = failed
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "upstream_refused",
            "bad_state",
            "bad_state",
            "upstream_rejected",
            "upstream_rejected",
            "upstream_rejected",
            "upstream_rejected"
        ]
    );
    let written = std::fs::read_to_string(server.dir.path().join("audit.log")).unwrap();
    let code = crate::support::query_param(&callback, "code").unwrap();
    for secret in [CLIENT_SECRET, code.as_str()] {
        assert!(!written.contains(secret));
        assert!(!server.log().iter().any(|l| l.contains(secret)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_sentence_at_the_button_and_tolerated_until_max_staleness() {
    let upstream = OidcProvider::start().await;

    // Nothing listens where this connector's issuer points: the button says so, with 503.
    let nowhere = format!("https://127.0.0.1:{}", free_port());
    let server = server_at(&upstream, &nowhere, "5m", "15m").await;
    let (browser_a, _) = browser(&server, &upstream);
    let auth = AuthParams::kubernetes();
    let mut query = auth.pairs();
    query.push(("connector_id", "okta".into()));
    let answer = server.authorize_raw(&browser_a, &query).await;
    page_says(
        answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "Okta cannot be reached right now",
    )
    .await;
    let failed = server.audit_events("LoginFailed", 1).await;
    assert_eq!(failed[0]["reason"], "upstream_unavailable");
    drop(server);

    // Signed in, then the upstream stalls (the check gives up after `timeout`), then goes away:
    // refreshes go on until revalidate_max_staleness.
    let server = server_with(&upstream, "1s", "4s").await;
    let alice = tokens(&server, &upstream).await;
    upstream.stall_next_token_request().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, refreshed) = server.refresh(&text(&alice, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let failed = server.audit_events("UpstreamRevalidationFailed", 1).await;
    assert_eq!(failed[0]["reason"], "unreachable");
    upstream.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = server.refresh(&text(&refreshed, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
}
