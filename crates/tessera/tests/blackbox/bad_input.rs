//! Malformed requests get the right OAuth 2.0 error and status (RFC 6749 §4.1.2.1, §5.2), never
//! a 500; a bad configuration file stops `tessera serve` with one sentence naming the problem.

use reqwest::StatusCode;

use crate::support::{
    Answer, AuthParams, Server, location, query_param, tessera_cli, write_private,
};

/// Asserts an OAuth error answer: status, `error`, JSON, `no-store`.
#[track_caller]
fn assert_oauth_error(answer: &Answer, status: StatusCode, error: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.error(), error, "{}", answer.body);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        answer.headers
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

/// A fresh refresh token of client `kubernetes`.
async fn live_refresh_token(server: &Server) -> String {
    server.kubernetes_tokens().await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn token_requests_without_or_with_an_unknown_grant_type_are_refused() {
    let server = Server::start().await;
    let missing = server.post("/token", &[("client_id", "kubernetes")]).await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");
    for grant in [
        "password",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:device_code",
        "REFRESH_TOKEN",
    ] {
        let unknown = server
            .post(
                "/token",
                &[
                    ("grant_type", grant),
                    ("client_id", "kubernetes"),
                    ("refresh_token", "x"),
                ],
            )
            .await;
        assert_oauth_error(&unknown, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
}

#[tokio::test]
async fn a_repeated_parameter_is_invalid_request_and_consumes_nothing() {
    let server = Server::start().await;
    let token = live_refresh_token(&server).await;
    let body = format!(
        "grant_type=refresh_token&client_id=kubernetes&refresh_token={token}&refresh_token={token}"
    );
    let response = server
        .http
        .post(server.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_oauth_error(
        &Answer::read(response).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let (status, body) = server.refresh(&token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_body_over_64_kb_is_413_invalid_request() {
    let server = Server::start().await;
    let padding = "a".repeat(70 * 1024);
    let answer = server
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "kubernetes"),
                ("refresh_token", &padding),
            ],
        )
        .await;
    assert_oauth_error(&answer, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    for path in ["/login", "/logout", "/authorize"] {
        let answer = server
            .post(path, &[("username", "dev"), ("password", &padding)])
            .await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
}

#[tokio::test]
async fn get_on_the_token_endpoint_is_405_with_allow_post() {
    let server = Server::start().await;
    for path in ["/token", "/revoke", "/introspect"] {
        let answer = server.get(path).await;
        assert_oauth_error(&answer, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
        assert_eq!(answer.header("allow"), Some("POST"), "{path}");
    }
}

#[tokio::test]
async fn a_json_body_is_invalid_request() {
    let server = Server::start().await;
    let token = live_refresh_token(&server).await;
    let response = server
        .http
        .post(server.url("/token"))
        .json(&serde_json::json!({
            "grant_type": "refresh_token",
            "client_id": "kubernetes",
            "refresh_token": token,
        }))
        .send()
        .await
        .unwrap();
    assert_oauth_error(
        &Answer::read(response).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let missing_type = server
        .http
        .post(server.url("/token"))
        .body("grant_type=refresh_token")
        .send()
        .await
        .unwrap();
    assert_oauth_error(
        &Answer::read(missing_type).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

#[tokio::test]
async fn garbage_and_oversized_refresh_tokens_are_invalid_grant() {
    let server = Server::start().await;
    let oversized = format!("tsr1_{}", "A".repeat(10 * 1024));
    for token in [
        "garbage",
        "tsr1_",
        "tsr1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "\u{0}\u{fffd}<script>",
        oversized.as_str(),
    ] {
        let (status, body) = server.refresh(token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    let missing = server
        .post(
            "/token",
            &[("grant_type", "refresh_token"), ("client_id", "kubernetes")],
        )
        .await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn code_exchanges_with_a_missing_code_or_a_wrong_redirect_or_verifier_are_refused() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let exchange = |code: String, redirect_uri: &'static str, verifier: &'static str| {
        let server = &server;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("redirect_uri", redirect_uri),
                ("client_id", "kubernetes"),
                ("code_verifier", verifier),
            ];
            if !code.is_empty() {
                form.push(("code", &code));
            }
            server.post("/token", &form).await
        }
    };
    let missing = exchange(String::new(), auth.redirect_uri, auth.verifier).await;
    assert_oauth_error(&missing, StatusCode::BAD_REQUEST, "invalid_request");

    let code = server.login(&auth).await;
    let wrong_redirect = exchange(code, "http://127.0.0.1:9/callback", auth.verifier).await;
    assert_oauth_error(&wrong_redirect, StatusCode::BAD_REQUEST, "invalid_grant");

    let code = server.login(&auth).await;
    let wrong_verifier = exchange(
        code,
        auth.redirect_uri,
        "another-verifier-that-is-long-enough-for-rfc-7636-section-4-1",
    )
    .await;
    assert_oauth_error(&wrong_verifier, StatusCode::BAD_REQUEST, "invalid_grant");

    let code = server.login(&auth).await;
    let no_verifier = server
        .post(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", auth.redirect_uri),
                ("client_id", "kubernetes"),
            ],
        )
        .await;
    assert_oauth_error(&no_verifier, StatusCode::BAD_REQUEST, "invalid_grant");

    let unknown = exchange("tsc1_unknown".into(), auth.redirect_uri, auth.verifier).await;
    assert_oauth_error(&unknown, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// /authorize with the kubernetes client's parameters, one replaced (or removed, with `None`).
async fn authorize_with(server: &Server, name: &str, value: Option<&str>) -> reqwest::Response {
    let mut query: Vec<(&str, String)> = AuthParams::kubernetes()
        .pairs()
        .into_iter()
        .filter(|(k, _)| *k != name)
        .collect();
    if let Some(value) = value {
        query.push((name, value.to_owned()));
    }
    server.authorize_raw(&server.http, &query).await
}

/// Asserts that /authorize showed an error page instead of redirecting anywhere.
async fn assert_error_page(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get("location").is_none());
    assert!(
        response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"))
    );
    assert!(!response.text().await.unwrap().contains("<form"));
}

/// Asserts that /authorize redirected back to the client with `error`.
fn assert_error_redirect(response: &reqwest::Response, error: &str) {
    assert!(response.status().is_redirection(), "{}", response.status());
    let target = location(response);
    assert!(
        target.starts_with("http://127.0.0.1:41234/callback?"),
        "{target}"
    );
    assert_eq!(
        query_param(&target, "error").as_deref(),
        Some(error),
        "{target}"
    );
    assert_eq!(query_param(&target, "state").as_deref(), Some("state-123"));
    assert!(query_param(&target, "code").is_none());
}

#[tokio::test]
async fn authorize_never_redirects_to_an_unregistered_uri_or_for_an_unknown_client() {
    let server = Server::start().await;
    for uri in [
        "https://evil.example/callback",
        "http://127.0.0.1:41234/other",
        "http://127.0.0.1.evil.example/callback",
        "not a url",
    ] {
        assert_error_page(authorize_with(&server, "redirect_uri", Some(uri)).await).await;
    }
    assert_error_page(authorize_with(&server, "redirect_uri", None).await).await;
    assert_error_page(authorize_with(&server, "client_id", Some("nobody")).await).await;
    assert_error_page(authorize_with(&server, "client_id", None).await).await;
    // The confidential client's redirect is exact: another port is another URI.
    let mut demo: Vec<(&str, String)> = AuthParams::demo().pairs();
    demo.retain(|(k, _)| *k != "redirect_uri");
    demo.push(("redirect_uri", "http://127.0.0.1:8001/callback".into()));
    assert_error_page(server.authorize_raw(&server.http, &demo).await).await;
    // The public client's loopback redirects match on any port (RFC 8252 §7.3).
    for uri in [
        "http://localhost:5555/callback",
        "http://127.0.0.1/callback",
    ] {
        let response = authorize_with(&server, "redirect_uri", Some(uri)).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri} shows the form");
    }
}

#[tokio::test]
async fn a_refresh_asking_for_more_scope_is_invalid_scope_and_keeps_the_token() {
    let server = Server::start().await;
    let token = live_refresh_token(&server).await;
    let answer = server
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "kubernetes"),
                ("refresh_token", &token),
                ("scope", "openid offline_access"),
            ],
        )
        .await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_scope");
    let (status, body) = server.refresh(&token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_refresh_token_of_another_client_is_invalid_grant_and_stays_usable_by_its_own() {
    let server = Server::start().await;
    let tokens = server.demo_tokens().await;
    let token = tokens["refresh_token"].as_str().unwrap();
    let (status, body) = server.refresh(token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let answer = server
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", "demo"),
                ("client_secret", &server.demo_secret),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn a_login_post_without_the_forms_csrf_token_is_refused() {
    let server = Server::start().await;
    let mut form: Vec<(&str, String)> = AuthParams::kubernetes().pairs();
    form.push(("username", "dev".into()));
    form.push(("password", crate::support::PASSWORD.into()));
    form.push(("csrf", "A".repeat(43)));
    // A browser that never saw the form has no CSRF cookie to match.
    let response = server
        .new_browser()
        .post(server.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get("location").is_none());
}

#[tokio::test]
async fn authorize_errors_about_pkce_and_scope_go_back_to_the_client() {
    let server = Server::start().await;
    let response = authorize_with(&server, "code_challenge", None).await;
    assert_error_redirect(&response, "invalid_request");
    let response = authorize_with(&server, "code_challenge_method", Some("plain")).await;
    assert_error_redirect(&response, "invalid_request");
    let response = authorize_with(&server, "code_challenge", Some("too-short")).await;
    assert_error_redirect(&response, "invalid_request");
    let response = authorize_with(&server, "scope", Some("profile email")).await;
    assert_error_redirect(&response, "invalid_scope");
    let response = authorize_with(&server, "response_type", Some("token")).await;
    assert_error_redirect(&response, "unsupported_response_type");
    let response = authorize_with(&server, "response_type", None).await;
    assert_error_redirect(&response, "invalid_request");
    let response = authorize_with(&server, "nonce", Some("n\u{0}once")).await;
    assert_error_redirect(&response, "invalid_request");
}

#[tokio::test]
async fn a_repeated_authorize_parameter_is_an_error_page() {
    let server = Server::start().await;
    let mut query = AuthParams::kubernetes().pairs();
    query.push(("redirect_uri", "https://evil.example/callback".into()));
    assert_error_page(server.authorize_raw(&server.http, &query).await).await;
}

#[tokio::test]
async fn no_malformed_request_is_ever_a_500() {
    let server = Server::start().await;
    let huge = "x".repeat(10 * 1024);
    let forms: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/token", vec![]),
        (
            "/token",
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", "kubernetes"),
                ("code", &huge),
            ],
        ),
        (
            "/token",
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", &huge),
                ("refresh_token", "x"),
            ],
        ),
        ("/token", vec![("grant_type", &huge)]),
        ("/revoke", vec![]),
        (
            "/revoke",
            vec![("token", &huge), ("client_id", "kubernetes")],
        ),
        ("/introspect", vec![("token", "x")]),
        ("/login", vec![]),
        ("/login", vec![("client_id", "kubernetes")]),
        ("/logout", vec![("id_token_hint", &huge)]),
        ("/authorize", vec![("client_id", &huge)]),
    ];
    for (path, form) in &forms {
        let answer = server.post(path, form).await;
        assert!(
            !answer.status.is_server_error(),
            "{path} {form:?}: {}",
            answer.status
        );
    }
    let odd_auth = [
        "Basic",
        "Basic !!!",
        "Basic a3ViZXJuZXRlcw==",
        "Bearer x",
        "Basic ",
    ];
    for value in odd_auth {
        let answer = server
            .post_as(
                &server.http,
                "/token",
                Some(value),
                &[("grant_type", "refresh_token"), ("refresh_token", "x")],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{value}: {}",
            answer.body
        );
        assert_eq!(answer.error(), "invalid_client");
    }
    for path in [
        "/authorize",
        "/authorize?%zz=1",
        "/logout?id_token_hint=a.b.c",
        "/userinfo",
        "/nowhere",
    ] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert!(
            !response.status().is_server_error(),
            "{path}: {}",
            response.status()
        );
    }
    let userinfo = server
        .http
        .get(server.url("/userinfo"))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.get("/healthz").await.status,
        StatusCode::OK,
        "still alive"
    );
}

#[test]
fn an_unknown_config_key_stops_serve_with_one_line_naming_its_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.yaml");
    write_private(
        &file,
        "tls:\n  cert_file: server.pem\n  key_file: server-key.pem\nrefresh_token:\n  ttl: 15m\n  grace_period: 5000\n",
    );
    let output = tessera_cli(&["serve".into(), "--config".into(), file.clone().into()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("refresh_token.grace_period"), "{stderr}");
    assert!(lines[0].contains("line 6"), "{stderr}");
    assert!(lines[0].contains(&file.display().to_string()), "{stderr}");
}

#[test]
fn a_missing_config_file_stops_serve_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.yaml");
    let output = tessera_cli(&["serve".into(), "--config".into(), file.clone().into()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(line.contains(&file.display().to_string()), "{stderr}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "the reason is said once: {stderr}"
    );
}
