//! Issue 11, the provider's part: logout that a foreign `id_token_hint` cannot trigger silently,
//! readiness and metrics that never scan the sessions table per call, and the headers every
//! answer carries.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tessera_core::clock::{Clock, SystemClock};

use crate::cluster::{Cluster, PG_PORT};
use crate::support::{
    AuthParams, DEMO_POST_LOGOUT, PASSWORD, Server, code_from, hidden_fields, location, text,
};

/// Logs in as `dev` with client `kubernetes` in `browser` and exchanges the code.
async fn kubernetes_tokens_in(server: &Server, browser: &reqwest::Client) -> Value {
    let auth = AuthParams::kubernetes();
    let response = server.submit_login(browser, &auth, PASSWORD).await;
    assert!(
        response.status().is_redirection(),
        "login answered {}",
        response.status()
    );
    server
        .exchange(&code_from(&location(&response)), &auth)
        .await
}

#[tokio::test]
async fn issue_11_logout_with_the_hint_of_another_sso_session_asks_before_ending_this_one() {
    let server = Server::start().await;
    // The victim's browser and its kubectl login, started from its SSO session.
    let victim = server.new_browser();
    let kubectl = kubernetes_tokens_in(&server, &victim).await;
    // Anyone's id_token: here one of another browser's sign-in, as an attacker would hold.
    let foreign = server.demo_tokens().await;

    for hint in [text(&foreign, "id_token"), text(&kubectl, "id_token")] {
        let response = victim
            .get(server.url("/logout"))
            .query(&[
                ("id_token_hint", hint.as_str()),
                ("post_logout_redirect_uri", DEMO_POST_LOGOUT),
                ("client_id", "demo"),
            ])
            .send()
            .await
            .unwrap();
        // The kubectl id_token belongs to this SSO session but to client `kubernetes`, which
        // registered no post-logout redirect: asked (or refused) too, never silent.
        assert!(
            !response.status().is_redirection(),
            "a link with a hint not of this browser's sign-in redirected at once"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains("<form") || page.contains("not registered"),
            "{page}"
        );
        assert!(
            server.signed_in(&victim).await,
            "the victim's SSO session is alive"
        );
    }
    let (status, body) = server.refresh(&text(&kubectl, "refresh_token")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the victim's kubectl session: {body}"
    );

    // The confirmation the page asks for still signs the victim out when they choose it.
    let response = victim
        .get(server.url("/logout"))
        .query(&[
            ("id_token_hint", text(&foreign, "id_token").as_str()),
            ("post_logout_redirect_uri", DEMO_POST_LOGOUT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let form = hidden_fields(&response.text().await.unwrap());
    let confirmed = victim
        .post(server.url("/logout"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        confirmed.status().is_redirection() || confirmed.status() == StatusCode::OK,
        "{}",
        confirmed.status()
    );
    assert!(!server.signed_in(&victim).await, "confirmed: signed out");
}

#[tokio::test]
async fn issue_11_logout_with_an_expired_foreign_hint_asks_too() {
    let server = Server::start_with(&[("TESSERA_TOKENS__ID_TOKEN_TTL", "1s")]).await;
    let victim = server.new_browser();
    kubernetes_tokens_in(&server, &victim).await;
    let foreign = server.demo_tokens().await;
    let hint = text(&foreign, "id_token");
    // Wait (polling the clock the token names) until the hint has expired.
    let exp = crate::support::claims(&hint)["exp"].as_i64().unwrap();
    while SystemClock.now().as_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = victim
        .get(server.url("/logout"))
        .query(&[
            ("id_token_hint", hint.as_str()),
            ("post_logout_redirect_uri", DEMO_POST_LOGOUT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "asked, not redirected");
    assert!(server.signed_in(&victim).await);
}

/// Holds `ACCESS EXCLUSIVE` on the sessions table from its own psql, as a long migration or a
/// `VACUUM FULL` would; released when dropped.
async fn lock_sessions_table(cluster: &Cluster) -> tokio::process::Child {
    let holder = cluster.db.spawn_psql(
        "BEGIN; LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120); COMMIT;",
    );
    for _ in 0..400 {
        let held = cluster.db.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'sessions' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        );
        if held.trim() == "1" {
            return holder;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the lock on sessions was not granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_11_readyz_and_a_second_scrape_never_scan_the_sessions_table() {
    let cluster = Cluster::single(PG_PORT, &[]).await;
    let base = cluster.replicas[0].url.clone();
    cluster.login(&base).await;
    let (status, _) = cluster.get(&base, "/metrics").await;
    assert_eq!(status, StatusCode::OK);

    let _holder = lock_sessions_table(&cluster).await;
    // A query on the sessions table waits for the lock; `SELECT 1` and a recent count do not.
    // The bound only ends a test that would otherwise wait for the lock.
    let bound = Duration::from_secs(20);
    let (status, body) = tokio::time::timeout(bound, cluster.get(&base, "/readyz"))
        .await
        .expect("/readyz waited for the sessions table");
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = tokio::time::timeout(bound, cluster.get(&base, "/metrics"))
        .await
        .expect("a second scrape waited for the sessions table");
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn issue_11_userinfo_is_never_stored_by_a_cache() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let response = server
        .http
        .get(server.url("/userinfo"))
        .bearer_auth(text(&tokens, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

#[tokio::test]
async fn issue_11_every_answer_carries_hsts_and_nosniff() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let answers = [
        server
            .http
            .get(server.url("/.well-known/openid-configuration")),
        server.http.get(server.url("/jwks")),
        server.http.get(server.url("/healthz")),
        server.http.get(server.url("/no-such-path")),
        server.http.get(server.url("/token")),
        server
            .http
            .get(server.url("/authorize"))
            .query(&auth.pairs()),
        server
            .http
            .post(server.url("/token"))
            .form(&[("grant_type", "refresh_token")]),
    ];
    for request in answers {
        let response = request.send().await.unwrap();
        let url = response.url().clone();
        let headers = response.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let hsts = header("strict-transport-security").unwrap_or_default();
        assert!(hsts.starts_with("max-age="), "{url}: HSTS `{hsts}`");
        assert_eq!(header("x-content-type-options"), Some("nosniff"), "{url}");
    }
}
