//! Issue 11, items 3 and 5 and the client-secret limit: the failure limits hold under
//! concurrency (an attempt is counted before its hash), user names are bounded and never logged
//! in full, refusals are summarised in the audit log instead of written one line each, and
//! wrong client secrets are limited per client and per address.

use std::net::IpAddr;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::support::{Answer, AuthParams, PASSWORD, Server, basic, hidden_fields};

/// Shows the login form in `browser` once and returns its hidden fields (the authorization
/// request and the CSRF token that matches the browser's cookie).
async fn login_form(server: &Server, browser: &reqwest::Client) -> Vec<(String, String)> {
    let response = server
        .authorize_raw(browser, &AuthParams::kubernetes().pairs())
        .await;
    assert_eq!(response.status(), StatusCode::OK, "the login form is shown");
    hidden_fields(&response.text().await.unwrap())
}

/// POSTs the login form as `username` with `password`; returns the status and the page.
async fn post_login(
    server: &Server,
    browser: &reqwest::Client,
    form: &[(String, String)],
    username: &str,
    password: &str,
) -> (StatusCode, String) {
    let mut form = form.to_vec();
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    let response = browser
        .post(server.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// One login attempt: the browser that sends it, the form it saw, and the guess.
struct Guess {
    browser: reqwest::Client,
    form: Vec<(String, String)>,
    username: String,
    password: String,
}

impl Guess {
    fn new(
        browser: &reqwest::Client,
        form: &[(String, String)],
        username: &str,
        password: &str,
    ) -> Guess {
        Guess {
            browser: browser.clone(),
            form: form.to_vec(),
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }
}

/// Sends every guess at once; returns the statuses.
async fn post_logins_at_once(server: &Server, guesses: Vec<Guess>) -> Vec<StatusCode> {
    let url = server.url("/login");
    let mut all = JoinSet::new();
    for Guess {
        browser,
        mut form,
        username,
        password,
    } in guesses
    {
        form.push(("username".into(), username));
        form.push(("password".into(), password));
        let url = url.clone();
        all.spawn(async move { browser.post(url).form(&form).send().await.unwrap().status() });
    }
    all.join_all().await
}

/// Fails a login as `barrier` from `address` (so not blocked by a flooded address or name) and
/// waits for its audit line: every event recorded before it is then on disk too. Returns the
/// events before it.
async fn audit_barrier(server: &Server, address: IpAddr) -> Vec<Value> {
    let browser = server.browser_from(address);
    let form = login_form(server, &browser).await;
    let (status, _) = post_login(server, &browser, &form, "barrier", "guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the barrier login");
    for _ in 0..200 {
        let events = server.audit();
        if let Some(at) = events.iter().position(|e| e["uid"] == "barrier") {
            return events[..at].to_vec();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the barrier's audit line was never written");
}

fn login_failures<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "LoginFailed" && e["reason"] == reason)
        .collect()
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn issue_11_two_hundred_concurrent_guesses_evaluate_at_most_max_failures_passwords() {
    let server = Server::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "3")]).await;
    let form = login_form(&server, &server.browser).await;
    let guesses = (0..200)
        .map(|i| Guess::new(&server.browser, &form, "dev", &format!("guess-{i}")))
        .collect();
    let statuses = post_logins_at_once(&server, guesses).await;
    assert!(
        count(&statuses, StatusCode::UNAUTHORIZED) <= 3,
        "at most three passwords were evaluated: {statuses:?}"
    );
    assert_eq!(
        count(&statuses, StatusCode::UNAUTHORIZED)
            + count(&statuses, StatusCode::TOO_MANY_REQUESTS),
        200,
        "{statuses:?}"
    );
    // The right password comes too late: the limit is used up.
    let (status, _) = post_login(&server, &server.browser, &form, "dev", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let events = audit_barrier(&server, IpAddr::from([127, 0, 0, 2])).await;
    let evaluated = login_failures(&events, "bad_credentials").len();
    assert!(
        (1..=3).contains(&evaluated),
        "{evaluated} passwords were evaluated"
    );
}

#[tokio::test]
async fn concurrent_guesses_from_many_addresses_are_bounded_by_the_user_limit() {
    let server = Server::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "3")]).await;
    let mut guesses = Vec::new();
    for host in 10..18 {
        let browser = server.browser_from(IpAddr::from([127, 0, 0, host]));
        let form = login_form(&server, &browser).await;
        for i in 0..20 {
            let guess = format!("guess-{host}-{i}");
            guesses.push(Guess::new(&browser, &form, "dev", &guess));
        }
    }
    let statuses = post_logins_at_once(&server, guesses).await;
    assert!(
        count(&statuses, StatusCode::UNAUTHORIZED) <= 3,
        "{statuses:?}"
    );
    let browser = server.browser_from(IpAddr::from([127, 0, 0, 30]));
    let form = login_form(&server, &browser).await;
    let (status, _) = post_login(&server, &browser, &form, "dev", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "dev is blocked");
}

#[tokio::test]
async fn concurrent_guesses_for_many_names_are_bounded_by_the_address_limit() {
    let server = Server::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "3")]).await;
    let form = login_form(&server, &server.browser).await;
    let guesses = (0..150)
        .map(|i| Guess::new(&server.browser, &form, &format!("user-{i}"), "guess"))
        .collect();
    let statuses = post_logins_at_once(&server, guesses).await;
    assert!(
        count(&statuses, StatusCode::UNAUTHORIZED) <= 3,
        "{statuses:?}"
    );
    let (status, _) = post_login(&server, &server.browser, &form, "dev", PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the address is blocked"
    );
}

#[tokio::test]
async fn a_user_name_over_256_bytes_gets_a_form_error_and_stays_out_of_the_audit_log() {
    let server = Server::start().await;
    let form = login_form(&server, &server.browser).await;
    for length in [257, 63 * 1024] {
        let name = "n".repeat(length);
        let (status, page) = post_login(&server, &server.browser, &form, &name, "guess").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{length} bytes");
        assert!(page.contains("at most 256 bytes"), "{page}");
        assert!(!page.contains(&name), "the name is not echoed");
    }
    // Exactly 256 bytes is a name like any other.
    let name = "n".repeat(256);
    let (status, _) = post_login(&server, &server.browser, &form, &name, "guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let events = audit_barrier(&server, IpAddr::from([127, 0, 0, 2])).await;
    assert_eq!(login_failures(&events, "bad_credentials").len(), 1);
    let log = std::fs::read_to_string(server.dir.path().join("audit.log")).unwrap();
    assert!(!log.contains(&"n".repeat(257)), "no long name is logged");
}

#[tokio::test]
async fn refused_logins_write_one_audit_line_per_window_not_one_per_request() {
    // 400 requests at once are 400 connections from one address: above the default cap.
    let server = Server::start_with(&[
        ("TESSERA_LOGIN__MAX_FAILURES", "3"),
        ("TESSERA_HTTP__MAX_CONNECTIONS_PER_IP", "1024"),
    ])
    .await;
    let form = login_form(&server, &server.browser).await;
    for _ in 0..3 {
        let (status, _) = post_login(&server, &server.browser, &form, "mallory", "guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let name = "m".repeat(256);
    let flood = (0..400)
        .map(|i| {
            let user = if i % 2 == 0 { "mallory" } else { name.as_str() };
            Guess::new(&server.browser, &form, user, "guess")
        })
        .collect();
    let statuses = post_logins_at_once(&server, flood).await;
    assert_eq!(count(&statuses, StatusCode::TOO_MANY_REQUESTS), 400);

    let events = audit_barrier(&server, IpAddr::from([127, 0, 0, 2])).await;
    assert_eq!(login_failures(&events, "bad_credentials").len(), 3);
    assert_eq!(
        login_failures(&events, "rate_limited").len(),
        1,
        "only the first refusal of the window is written"
    );
}

#[tokio::test]
async fn a_closed_window_is_summarised_with_the_number_of_refused_logins() {
    let server = Server::start_with(&[
        ("TESSERA_LOGIN__MAX_FAILURES", "2"),
        ("TESSERA_LOGIN__FAILURE_WINDOW", "1s"),
    ])
    .await;
    let form = login_form(&server, &server.browser).await;
    let mut refused = 0;
    while refused < 20 {
        let (status, _) = post_login(&server, &server.browser, &form, "mallory", "guess").await;
        match status {
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            StatusCode::UNAUTHORIZED => {}
            other => panic!("{other}"),
        }
    }
    // Every window that refused something closes with one summary carrying its count.
    let summed = |events: &[Value], field: &str, value: &str| -> u64 {
        events
            .iter()
            .filter(|e| e["event"] == "RateLimitEnded" && e["limiter"] == "login")
            .filter(|e| e[field] == value)
            .map(|e| e["refused"].as_u64().unwrap())
            .sum()
    };
    let mut events = Vec::new();
    for _ in 0..300 {
        events = server.audit();
        if summed(&events, "uid", "mallory") == refused
            && summed(&events, "source_ip", "127.0.0.1") == refused
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(summed(&events, "uid", "mallory"), refused, "{events:#?}");
    assert_eq!(summed(&events, "source_ip", "127.0.0.1"), refused);
    let summaries = events.iter().filter(|e| e["event"] == "RateLimitEnded");
    assert!(summaries.clone().all(|e| e["severity"] == "warning"));
    assert!(
        login_failures(&events, "rate_limited").len() <= summaries.count(),
        "one first-refusal line per limited window at most"
    );
}

/// Refreshes as `demo` with `secret` from `client`.
async fn demo_refresh(
    server: &Server,
    client: &reqwest::Client,
    token: &str,
    secret: &str,
) -> Answer {
    server
        .post_as(
            client,
            "/token",
            Some(&basic("demo", secret)),
            &[("grant_type", "refresh_token"), ("refresh_token", token)],
        )
        .await
}

#[tokio::test]
async fn wrong_client_secrets_are_limited_per_client_with_429_and_retry_after() {
    let server = Server::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "3")]).await;
    let tokens = server.demo_tokens().await;
    let token = tokens["refresh_token"].as_str().unwrap();
    for attempt in 1..=3 {
        let refused = demo_refresh(&server, &server.http, token, "not-the-secret").await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
        assert_eq!(refused.error(), "invalid_client");
        assert!(refused.header("www-authenticate").is_some());
    }
    let limited = demo_refresh(&server, &server.http, token, "not-the-secret").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert_eq!(limited.error(), "invalid_client");
    assert_eq!(limited.header("cache-control"), Some("no-store"));
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after > 0);
    // Per client: another address is refused too.
    let elsewhere = server.client_from(IpAddr::from([127, 0, 0, 2]));
    let limited = demo_refresh(&server, &elsewhere, token, "also-not-it").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // The real client, whose secret was verified before, is not locked out.
    let refreshed = demo_refresh(&server, &server.http, token, &server.demo_secret).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);

    let failed: Vec<Value> = server.audit_events("ClientAuthenticationFailed", 4).await;
    let reasons: Vec<&str> = failed
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["bad_secret", "bad_secret", "bad_secret", "rate_limited"],
        "one line for the first refusal only"
    );
    assert!(failed.iter().all(|e| e["client_id"] == "demo"));
}

#[tokio::test]
async fn concurrent_wrong_client_secrets_are_bounded_and_leave_logins_from_that_address_alone() {
    let server = Server::start_with(&[("TESSERA_LOGIN__MAX_FAILURES", "3")]).await;
    let tokens = server.demo_tokens().await;
    let token = tokens["refresh_token"].as_str().unwrap();
    let attacker = server.client_from(IpAddr::from([127, 0, 0, 9]));
    let statuses = {
        let mut all = JoinSet::new();
        for i in 0..50 {
            let (client, url) = (attacker.clone(), server.url("/token"));
            let form = [
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", token.to_owned()),
                ("client_id", "demo".to_owned()),
                ("client_secret", format!("guess-{i}")),
            ];
            all.spawn(async move { client.post(url).form(&form).send().await.unwrap().status() });
        }
        all.join_all().await
    };
    assert!(
        count(&statuses, StatusCode::UNAUTHORIZED) <= 3,
        "{statuses:?}"
    );
    assert_eq!(
        count(&statuses, StatusCode::UNAUTHORIZED)
            + count(&statuses, StatusCode::TOO_MANY_REQUESTS),
        50
    );
    // Logins from that address are a separate account: still allowed.
    let browser = server.browser_from(IpAddr::from([127, 0, 0, 9]));
    let form = login_form(&server, &browser).await;
    let (status, _) = post_login(&server, &browser, &form, "dev", PASSWORD).await;
    assert!(status.is_redirection(), "{status}");
}
