//! Every endpoint of the provider as an RP, kubectl or a browser meets it: discovery and JWKS,
//! client authentication, userinfo, introspection, revocation, logout, single sign-on,
//! operations, restarts and login rate limiting.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    Answer, AuthParams, DEMO_POST_LOGOUT, PASSWORD, Server, basic, claims, code_from,
    hidden_fields, location, query_param, sample, text, verify_jwt,
};

/// Refreshes as `demo` with its secret in the body (`client_secret_post`).
async fn demo_refresh_post(server: &Server, token: &str, secret: &str) -> Answer {
    server
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", "demo"),
                ("client_secret", secret),
            ],
        )
        .await
}

/// Refreshes as `demo` with `Authorization: Basic` (`client_secret_basic`).
async fn demo_refresh_basic(server: &Server, token: &str, secret: &str) -> Answer {
    server
        .post_as(
            &server.http,
            "/token",
            Some(&basic("demo", secret)),
            &[("grant_type", "refresh_token"), ("refresh_token", token)],
        )
        .await
}

/// Exchanges a code of client `demo` with an `Authorization` header.
async fn demo_exchange(server: &Server, code: &str, authorization: &str) -> Answer {
    let auth = AuthParams::demo();
    server
        .post_as(
            &server.http,
            "/token",
            Some(authorization),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", auth.redirect_uri),
                ("code_verifier", auth.verifier),
            ],
        )
        .await
}

/// Introspects as `demo`.
async fn introspect(server: &Server, token: &str) -> Value {
    let answer = server
        .post_as(
            &server.http,
            "/introspect",
            Some(&basic("demo", &server.demo_secret)),
            &[("token", token)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

/// Whether /authorize in `browser` goes straight back with a code (a live SSO session) rather
/// than showing the login form.
#[tokio::test]
async fn discovery_lists_every_field_an_rp_library_needs() {
    let server = Server::start().await;
    let answer = server.get("/.well-known/openid-configuration").await;
    assert_eq!(answer.status, StatusCode::OK);
    let doc = &answer.body;
    let issuer = &server.issuer;
    assert_eq!(doc["issuer"], issuer.as_str());
    for (field, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
        ("userinfo_endpoint", "/userinfo"),
        ("revocation_endpoint", "/revoke"),
        ("introspection_endpoint", "/introspect"),
        ("end_session_endpoint", "/logout"),
    ] {
        assert_eq!(doc[field], format!("{issuer}{path}"), "{field}");
    }
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let list = |field: &str| -> Vec<String> {
        doc[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field} is not a list: {doc}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(list("response_types_supported"), ["code"]);
    for grant in ["authorization_code", "refresh_token"] {
        assert!(list("grant_types_supported").contains(&grant.to_owned()));
    }
    assert_eq!(list("id_token_signing_alg_values_supported"), ["RS256"]);
    for method in ["client_secret_basic", "client_secret_post", "none"] {
        assert!(list("token_endpoint_auth_methods_supported").contains(&method.to_owned()));
    }
    assert!(list("subject_types_supported").contains(&"public".to_owned()));
    for scope in ["openid", "profile", "email", "groups", "offline_access"] {
        assert!(
            list("scopes_supported").contains(&scope.to_owned()),
            "{scope}"
        );
    }
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "auth_time",
        "nonce",
        "sid",
        "preferred_username",
        "email",
        "email_verified",
        "groups",
    ] {
        assert!(
            list("claims_supported").contains(&claim.to_owned()),
            "{claim}"
        );
    }
    // The advertised key location answers.
    let jwks = server.http.get(text(doc, "jwks_uri")).send().await.unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);
}

#[tokio::test]
async fn jwks_keys_verify_the_signatures_of_id_tokens_and_access_tokens() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let jwks = server.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        assert_eq!(key["use"], "sig");
        assert!(key["kid"].is_string() && key["alg"].is_string());
        assert!(key.get("d").is_none(), "no private parts in the JWKS");
    }
    let id = verify_jwt(
        &jwks,
        &text(&tokens, "id_token"),
        &server.issuer,
        "kubernetes",
    )
    .unwrap();
    assert_eq!(id["sub"], "dev");
    assert_eq!(id["nonce"], "nonce-456");
    let access = verify_jwt(
        &jwks,
        &text(&tokens, "access_token"),
        &server.issuer,
        "kubernetes",
    )
    .unwrap();
    assert_eq!(access["sid"], id["sid"]);

    // A tampered token does not verify.
    let id_token = text(&tokens, "id_token");
    let mut parts: Vec<&str> = id_token.split('.').collect();
    let forged_payload = base64_url(
        &serde_json::to_vec(&serde_json::json!({
            "iss": server.issuer, "sub": "admin", "aud": "kubernetes", "exp": id["exp"]
        }))
        .unwrap(),
    );
    parts[1] = &forged_payload;
    assert!(verify_jwt(&jwks, &parts.join("."), &server.issuer, "kubernetes").is_err());
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn the_confidential_client_authenticates_with_client_secret_basic_and_client_secret_post() {
    let server = Server::start().await;
    // Code exchange with client_secret_basic, then a refresh with each method.
    let tokens = server.demo_tokens().await;
    assert!(
        verify_jwt(
            &server.jwks().await,
            &text(&tokens, "id_token"),
            &server.issuer,
            "demo"
        )
        .is_ok()
    );
    let basic_answer = demo_refresh_basic(
        &server,
        &text(&tokens, "refresh_token"),
        &server.demo_secret,
    )
    .await;
    assert_eq!(basic_answer.status, StatusCode::OK, "{}", basic_answer.body);
    let post_answer = demo_refresh_post(
        &server,
        &text(&basic_answer.body, "refresh_token"),
        &server.demo_secret,
    )
    .await;
    assert_eq!(post_answer.status, StatusCode::OK, "{}", post_answer.body);

    // Code exchange with client_secret_post.
    let auth = AuthParams::demo();
    let code = server.login(&auth).await;
    let answer = server
        .post(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", auth.redirect_uri),
                ("code_verifier", auth.verifier),
                ("client_id", "demo"),
                ("client_secret", &server.demo_secret),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(claims(&text(&answer.body, "id_token"))["aud"], "demo");
}

#[tokio::test]
async fn golang_oauth2s_basic_header_with_an_empty_secret_works_for_the_public_client() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let code = server.login(&auth).await;
    let empty_secret = basic("kubernetes", "");
    assert_eq!(empty_secret, "Basic a3ViZXJuZXRlczo=");
    let answer = server
        .post_as(
            &server.http,
            "/token",
            Some(&empty_secret),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", auth.redirect_uri),
                ("code_verifier", auth.verifier),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let refresh = server
        .post_as(
            &server.http,
            "/token",
            Some(&empty_secret),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &text(&answer.body, "refresh_token")),
            ],
        )
        .await;
    assert_eq!(refresh.status, StatusCode::OK, "{}", refresh.body);
    // The header together with the same client_id in the body is fine too.
    let both = server
        .post_as(
            &server.http,
            "/token",
            Some(&empty_secret),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &text(&refresh.body, "refresh_token")),
                ("client_id", "kubernetes"),
            ],
        )
        .await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.body);
}

#[tokio::test]
async fn a_token_whose_header_attempt_was_refused_still_works_when_retried_in_the_body() {
    // golang.org/x/oauth2 auto-detects the auth style: when the Basic attempt fails it sends the
    // same refresh token again with client_id in the body. The failed attempt must not burn it.
    let server = Server::start().await;
    let token = text(&server.kubernetes_tokens().await, "refresh_token");
    let refused = server
        .post_as(
            &server.http,
            "/token",
            Some(&basic(
                "kubernetes",
                "a-secret-a-public-client-does-not-have",
            )),
            &[("grant_type", "refresh_token"), ("refresh_token", &token)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert_eq!(refused.error(), "invalid_client");
    let (status, body) = server.refresh(&token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry in the body works: {body}"
    );
}

#[tokio::test]
async fn a_wrong_client_secret_is_401_invalid_client_and_burns_neither_code_nor_refresh_token() {
    let server = Server::start().await;
    let auth = AuthParams::demo();
    let code = server.login(&auth).await;
    let refused = demo_exchange(&server, &code, &basic("demo", "not-the-secret")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert_eq!(refused.error(), "invalid_client");
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        refused.headers
    );
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    let tokens = demo_exchange(&server, &code, &basic("demo", &server.demo_secret)).await;
    assert_eq!(
        tokens.status,
        StatusCode::OK,
        "the code survived: {}",
        tokens.body
    );

    let token = text(&tokens.body, "refresh_token");
    let refused = demo_refresh_post(&server, &token, "not-the-secret").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert_eq!(refused.error(), "invalid_client");
    assert!(refused.header("www-authenticate").is_some());
    let refused = demo_refresh_basic(&server, &token, "").await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "an empty secret is no secret"
    );
    let refreshed = demo_refresh_post(&server, &token, &server.demo_secret).await;
    assert_eq!(
        refreshed.status,
        StatusCode::OK,
        "the token survived: {}",
        refreshed.body
    );

    // An unknown client is refused the same way.
    let unknown = server
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &text(&refreshed.body, "refresh_token")),
                ("client_id", "nobody"),
            ],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.error(), "invalid_client");
}

#[tokio::test]
async fn userinfo_answers_the_claims_for_an_access_token_and_refuses_anything_else() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let bearer = |token: &str| {
        server
            .http
            .get(server.url("/userinfo"))
            .bearer_auth(token)
            .send()
    };
    let answer = Answer::read(bearer(&text(&tokens, "access_token")).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["sub"], "dev");
    assert_eq!(answer.body["preferred_username"], "dev");
    assert_eq!(answer.body["email"], "dev@example.com");
    assert!(
        answer.body["groups"]
            .as_array()
            .unwrap()
            .contains(&"dev".into())
    );

    let id_token = Answer::read(bearer(&text(&tokens, "id_token")).await.unwrap()).await;
    assert_eq!(
        id_token.status,
        StatusCode::UNAUTHORIZED,
        "an id_token is no access token"
    );
    let none = server.get("/userinfo").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        none.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
}

#[tokio::test]
async fn introspection_tells_the_demo_client_which_tokens_are_active() {
    let server = Server::start().await;
    let tokens = server.demo_tokens().await;
    let first = text(&tokens, "refresh_token");
    let info = introspect(&server, &first).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["token_type"], "refresh_token");
    assert_eq!(info["client_id"], "demo");
    assert_eq!(info["sub"], "dev");
    let info = introspect(&server, &text(&tokens, "access_token")).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "dev");

    let refreshed = demo_refresh_basic(&server, &first, &server.demo_secret).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    assert_eq!(
        introspect(&server, &first).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        introspect(&server, &text(&refreshed.body, "refresh_token")).await["active"],
        true
    );
    assert_eq!(introspect(&server, "tsr1_garbage").await["active"], false);

    let anonymous = server.post("/introspect", &[("token", &first)]).await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.body
    );
    assert_eq!(anonymous.error(), "invalid_client");
    assert!(anonymous.header("www-authenticate").is_some());
    let public = server
        .post(
            "/introspect",
            &[("token", &first), ("client_id", "kubernetes")],
        )
        .await;
    assert_eq!(public.status, StatusCode::UNAUTHORIZED, "{}", public.body);
    assert_eq!(public.error(), "invalid_client");
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_whole_session() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let other = text(&server.kubernetes_tokens().await, "refresh_token");
    let first = text(&tokens, "refresh_token");
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK);
    let current = text(&rotated, "refresh_token");
    assert_eq!(
        sample(&server.metrics().await, "tessera_active_sessions"),
        Some(2.0)
    );

    let answer = server
        .post(
            "/revoke",
            &[("token", &current), ("client_id", "kubernetes")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (status, body) = server.refresh(&current).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = server.refresh(&first).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &"invalid_grant".into())
    );
    let userinfo = server
        .http
        .get(server.url("/userinfo"))
        .bearer_auth(text(&rotated, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        userinfo.status(),
        StatusCode::UNAUTHORIZED,
        "the session's access tokens die too"
    );
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["reason"], "revocation_endpoint");
    assert_eq!(
        sample(&server.metrics().await, "tessera_active_sessions"),
        Some(1.0)
    );
    let (status, body) = server.refresh(&other).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another session is untouched: {body}"
    );

    // RFC 7009 §2.2: an unknown token is no error.
    let unknown = server
        .post(
            "/revoke",
            &[("token", "tsr1_unknown"), ("client_id", "kubernetes")],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::OK);
}

#[tokio::test]
async fn logout_with_a_valid_hint_and_registered_redirect_signs_out_without_asking() {
    let server = Server::start().await;
    let tokens = server.demo_tokens().await;
    let response = server
        .browser
        .get(server.url("/logout"))
        .query(&[
            ("id_token_hint", text(&tokens, "id_token").as_str()),
            ("post_logout_redirect_uri", DEMO_POST_LOGOUT),
            ("state", "bye-1"),
        ])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    let target = location(&response);
    assert!(target.starts_with(DEMO_POST_LOGOUT), "{target}");
    assert_eq!(query_param(&target, "state").as_deref(), Some("bye-1"));

    let refreshed = demo_refresh_basic(
        &server,
        &text(&tokens, "refresh_token"),
        &server.demo_secret,
    )
    .await;
    assert_eq!(
        refreshed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refreshed.body
    );
    assert_eq!(refreshed.error(), "invalid_grant");
    assert!(
        !server.signed_in(&server.browser).await,
        "the SSO session ended"
    );

    // An unregistered post_logout_redirect_uri is never followed.
    let tokens = server.demo_tokens().await;
    let response = server
        .browser
        .get(server.url("/logout"))
        .query(&[
            ("id_token_hint", text(&tokens, "id_token").as_str()),
            ("post_logout_redirect_uri", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(server.signed_in(&server.browser).await, "nothing was ended");
}

#[tokio::test]
async fn logout_without_a_hint_asks_first_and_only_the_confirmed_post_signs_out() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let browser = &server.browser;

    let response = browser.get(server.url("/logout")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"))
    );
    let form = hidden_fields(&response.text().await.unwrap());
    assert!(form.iter().any(|(name, _)| name == "csrf"), "{form:?}");
    assert!(
        server.signed_in(browser).await,
        "showing the page signs no one out"
    );

    // A cross-site POST without the form's CSRF token is only asked again.
    let forged = browser
        .post(server.url("/logout"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::OK);
    assert!(
        server.signed_in(browser).await,
        "a forged POST signs no one out"
    );

    let confirmed = browser
        .post(server.url("/logout"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert!(!server.signed_in(browser).await, "the login form is back");
    // Signing the browser out names no app session: kubectl's, started through that SSO
    // session, lives on (only "sign out everywhere", an admin or a disabled account end it).
    let (status, body) = server.refresh(&text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "kubectl's session lives on: {body}");
}

#[tokio::test]
async fn a_second_authorization_in_the_same_browser_needs_no_password() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let first = server.exchange(&server.login(&auth).await, &auth).await;
    let response = server.authorize_raw(&server.browser, &auth.pairs()).await;
    assert!(
        response.status().is_redirection(),
        "no form: {}",
        response.status()
    );
    let target = location(&response);
    assert_eq!(query_param(&target, "state").as_deref(), Some("state-123"));
    let second = server.exchange(&code_from(&target), &auth).await;
    let (a, b) = (
        claims(&text(&first, "id_token")),
        claims(&text(&second, "id_token")),
    );
    assert_ne!(a["sid"], b["sid"], "every login is its own session");
    assert_eq!(a["auth_time"], b["auth_time"], "one sign-in");

    // A browser without the cookie sees the form, and prompt=login asks again in any browser.
    assert!(!server.signed_in(&server.new_browser()).await);
    let mut query = auth.pairs();
    query.push(("prompt", "login".into()));
    let response = server.authorize_raw(&server.browser, &query).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "prompt=login shows the form"
    );
}

#[tokio::test]
async fn unknown_scopes_are_ignored_and_openid_alone_still_gets_a_refresh_token() {
    let server = Server::start().await;
    for (asked, granted) in [
        ("openid", "openid"),
        ("openid kubernetes:admin email", "openid email"),
    ] {
        let auth = AuthParams {
            scope: asked,
            ..AuthParams::kubernetes()
        };
        let tokens = server.exchange(&server.login(&auth).await, &auth).await;
        assert_eq!(tokens["scope"], granted);
        assert!(text(&tokens, "refresh_token").starts_with("tsr1_"));
        let id = claims(&text(&tokens, "id_token"));
        assert_eq!(id["email"].is_string(), granted.contains("email"), "{id}");
        assert!(id["groups"].is_null(), "{id}");
        let (status, refreshed) = server.refresh(&text(&tokens, "refresh_token")).await;
        assert_eq!(status, StatusCode::OK, "{refreshed}");
        assert_eq!(refreshed["scope"], granted);
    }
}

#[tokio::test]
async fn prompt_none_without_a_sign_in_redirects_with_login_required() {
    let server = Server::start().await;
    let mut query = AuthParams::kubernetes().pairs();
    query.push(("prompt", "none".into()));
    let response = server.authorize_raw(&server.browser, &query).await;
    assert!(response.status().is_redirection(), "{}", response.status());
    let target = location(&response);
    assert!(
        target.starts_with("http://127.0.0.1:41234/callback?"),
        "{target}"
    );
    assert_eq!(
        query_param(&target, "error").as_deref(),
        Some("login_required")
    );
    assert_eq!(query_param(&target, "state").as_deref(), Some("state-123"));
    assert!(query_param(&target, "code").is_none());

    // Signed in, prompt=none answers a code.
    server.login(&AuthParams::kubernetes()).await;
    let response = server.authorize_raw(&server.browser, &query).await;
    assert!(query_param(&location(&response), "code").is_some());
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let (status, _) = server.refresh(&text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(server.get("/readyz").await.status, StatusCode::OK);
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let Value::String(text) = &metrics.body else {
        panic!("metrics are text: {}", metrics.body)
    };
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
    };
    assert!(line("tessera_refresh_token_redemptions").contains("outcome=\"rotated\""));
    assert!(
        line("tessera_refresh_token_redemptions").ends_with(" 1"),
        "{text}"
    );
    assert_eq!(
        line("tessera_active_sessions "),
        "tessera_active_sessions 1"
    );
    assert!(
        text.lines().any(|l| l.starts_with("tessera_http_requests")
            && l.contains("endpoint=\"/token\"")
            && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(
        text.contains("tessera_http_request_duration_seconds"),
        "{text}"
    );
}

#[tokio::test]
async fn a_restart_in_the_same_data_directory_keeps_keys_and_refresh_tokens() {
    let server = Server::start().await;
    let tokens = server.kubernetes_tokens().await;
    let old_issuer = server.issuer.clone();
    let kids_before = server.jwks().await;
    let restarted = Server::start_in(server.stop(), &[]).await;

    let jwks = restarted.jwks().await;
    assert_eq!(jwks, kids_before, "the same keys");
    // The issuer follows the new port; the signature is what must survive.
    let id = verify_jwt(&jwks, &text(&tokens, "id_token"), &old_issuer, "kubernetes").unwrap();
    assert_eq!(id["sub"], "dev");
    let (status, body) = restarted.refresh(&text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        restarted
            .verify(&text(&body, "id_token"), "kubernetes")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn six_wrong_passwords_are_answered_429_with_retry_after() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    for attempt in 1..=5 {
        let response = server.submit_login(&server.browser, &auth, "wrong").await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    let response = server.submit_login(&server.browser, &auth, "wrong").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("429 says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0);
    // Blocked means blocked, even with the right password.
    let response = server.submit_login(&server.browser, &auth, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let limited = server.audit_events("LoginFailed", 6).await;
    assert!(
        limited.iter().any(|e| e["reason"] == "rate_limited"),
        "{limited:?}"
    );
}

#[tokio::test]
async fn login_failures_are_limited_per_user_and_per_address() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    let elsewhere = std::net::IpAddr::from([127, 0, 0, 2]);
    // Five users fail once each from 127.0.0.1: that address is blocked, for every user ...
    for user in ["ann", "bob", "cyd", "dan", "eve"] {
        let response = server
            .submit_login_as(&server.browser, &auth, user, "wrong")
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{user}");
    }
    let response = server
        .submit_login(&server.new_browser(), &auth, PASSWORD)
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // ... but not `dev` from another address.
    let response = server
        .submit_login(&server.browser_from(elsewhere), &auth, PASSWORD)
        .await;
    assert!(response.status().is_redirection(), "{}", response.status());

    // Five failures for `dev` from that address block `dev` from a third one too.
    let browser = server.browser_from(elsewhere);
    for _ in 0..5 {
        let response = server.submit_login(&browser, &auth, "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let third = std::net::IpAddr::from([127, 0, 0, 3]);
    let response = server
        .submit_login(&server.browser_from(third), &auth, PASSWORD)
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn only_failed_logins_count_toward_the_rate_limit() {
    let server = Server::start().await;
    let auth = AuthParams::kubernetes();
    for _ in 0..4 {
        let response = server.submit_login(&server.browser, &auth, "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Correct logins before the limit work and are not counted: each in a fresh browser, so the
    // form is shown every time.
    for _ in 0..3 {
        let response = server
            .submit_login(&server.new_browser(), &auth, PASSWORD)
            .await;
        assert!(response.status().is_redirection(), "{}", response.status());
        code_from(&location(&response));
    }
    let response = server.submit_login(&server.browser, &auth, "wrong").await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the fifth failure"
    );
    let response = server.submit_login(&server.browser, &auth, "wrong").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}
