//! Issue 13, the admin side: `tessera sessions list|revoke` and `tessera users disable|enable`
//! on the server's configuration while it runs, and the admin API `/admin/v1/` behind an
//! access token of someone in `admin.groups`; both storage backends.

use std::process::{Command, Output, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cluster::Database;
use crate::support::{
    Answer, AuthParams, PASSWORD, Server, claims, code_from, location, text, write_private,
};

/// `admin.groups` of every server here: the dev user is in `dev`.
const ADMIN_GROUPS: (&str, &str) = ("TESSERA_ADMIN__GROUPS", "[dev]");

#[tokio::test]
async fn sessions_are_listed_and_revoked_by_id_and_by_user_through_the_cli_and_the_api_on_sqlite() {
    let server = Server::start_with(&[ADMIN_GROUPS]).await;
    list_and_revoke(&server, &[]).await;
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_by_id_and_by_user_through_the_cli_and_the_api_on_postgres()
{
    let db = Database::create();
    let url = db.url(5432);
    let storage = ("TESSERA_STORAGE__URL", url.as_str());
    let server = Server::start_with(&[ADMIN_GROUPS, storage]).await;
    list_and_revoke(&server, &[storage]).await;
}

/// Two kubectl sessions and one of `demo`, whose access token is the admin's: one kubectl
/// session ended by id through the CLI, the other through the API, then `demo`'s by person.
async fn list_and_revoke(server: &Server, cli_env: &[(&str, &str)]) {
    let kubectl_1 = server.kubernetes_tokens().await;
    let kubectl_2 = server.kubernetes_tokens().await;
    let demo = server.demo_tokens().await;
    let [k1, k2, d] = [&kubectl_1, &kubectl_2, &demo].map(sid);
    let admin_token = text(&demo, "access_token");

    let listed = cli_json(server, cli_env, &["sessions", "list", "--json"]);
    assert_eq!(ids(&listed), sorted([&k1, &k2, &d]), "{listed}");
    assert_eq!(listed["next_cursor"], Value::Null);
    let one = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == k1)
        .unwrap();
    assert_eq!(one["user"], "dev");
    assert_eq!(one["client_id"], "kubernetes");
    assert_eq!(one["connector_id"], Value::Null, "a local user");
    for field in ["first_use", "last_use"] {
        assert_eq!(one[field]["ip"], "127.0.0.1", "{one}");
        assert!(one[field]["at"].as_str().unwrap().ends_with('Z'), "{one}");
    }
    assert!(one["expires_at"].is_string(), "{one}");
    let table = cli_ok(server, cli_env, &["sessions", "list", "--client", "demo"]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&d) && !table.contains(&k1), "{table}");
    let first = cli_json(
        server,
        cli_env,
        &["sessions", "list", "--json", "--limit", "1"],
    );
    assert_eq!(ids(&first).len(), 1);
    assert!(first["next_cursor"].is_string(), "{first}");

    // By id through the CLI: kubectl's next refresh is refused.
    let said = cli_ok(server, cli_env, &["sessions", "revoke", &k1]);
    assert!(said.contains(&format!("ended session {k1}")), "{said}");
    let (status, body) = server.refresh(&text(&kubectl_1, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let again = cli(server, cli_env, &["sessions", "revoke", &k1]);
    assert!(!again.status.success());
    let error = String::from_utf8_lossy(&again.stderr);
    assert!(
        error.contains("no live session has id") && error.contains("tessera sessions list"),
        "{error}"
    );

    // Through the API: pages in a stable order, a client filter, then by id.
    let all = api(
        server,
        Method::GET,
        "/admin/v1/sessions",
        Some(&admin_token),
    )
    .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(ids(&all.body), sorted([&k2, &d]));
    let page_1 = api(
        server,
        Method::GET,
        "/admin/v1/sessions?limit=1",
        Some(&admin_token),
    )
    .await;
    let cursor = page_1.body["next_cursor"].as_str().unwrap().to_owned();
    let page_2 = api(
        server,
        Method::GET,
        &format!("/admin/v1/sessions?limit=1&cursor={cursor}"),
        Some(&admin_token),
    )
    .await;
    assert_eq!(page_2.body["next_cursor"], Value::Null, "{}", page_2.body);
    let paged = [ids(&page_1.body), ids(&page_2.body)].concat();
    assert_eq!(paged, ids(&all.body), "the pages follow one order");
    let kubectl = api(
        server,
        Method::GET,
        "/admin/v1/sessions?client=kubernetes",
        Some(&admin_token),
    )
    .await;
    assert_eq!(ids(&kubectl.body), std::slice::from_ref(&k2));
    assert_eq!(
        kubectl.body,
        json!({"sessions": [all.body["sessions"].as_array().unwrap().iter().find(|s| s["id"] == k2).unwrap()], "next_cursor": null}),
        "one shape for the CLI and the API"
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=..%2F",
        "users=dev",
    ] {
        let answer = api(
            server,
            Method::GET,
            &format!("/admin/v1/sessions?{bad}"),
            Some(&admin_token),
        )
        .await;
        assert_eq!(
            (answer.status, answer.error()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}: {}",
            answer.body
        );
    }
    let path = format!("/admin/v1/sessions/{k2}");
    let ended = api(server, Method::DELETE, &path, Some(&admin_token)).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT, "{}", ended.body);
    let (status, _) = server.refresh(&text(&kubectl_2, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let gone = api(server, Method::DELETE, &path, Some(&admin_token)).await;
    assert_eq!(
        (gone.status, gone.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // By person: nothing of kubernetes is left, which is said; then demo's (the admin's own).
    let nothing = cli(
        server,
        cli_env,
        &[
            "sessions",
            "revoke",
            "--user",
            "dev",
            "--client",
            "kubernetes",
        ],
    );
    assert!(!nothing.status.success());
    let error = String::from_utf8_lossy(&nothing.stderr);
    assert!(
        error.contains("dev has no live session of client kubernetes"),
        "{error}"
    );
    let said = cli_ok(server, cli_env, &["sessions", "revoke", "--user", "dev"]);
    assert!(
        said.contains(&format!("ended session {d} (client demo)")),
        "{said}"
    );
    let after = api(
        server,
        Method::GET,
        "/admin/v1/sessions",
        Some(&admin_token),
    )
    .await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "a revoked session's token is no admin's"
    );
    assert!(
        cli_json(server, cli_env, &["sessions", "list", "--json"])["sessions"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let revoked = server.audit_events("SessionRevoked", 3).await;
    let by_session = |id: &str| {
        revoked
            .iter()
            .find(|e| e["session_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {revoked:?}"))
    };
    for (id, admin) in [(&k1, "cli"), (&k2, "dev"), (&d, "cli")] {
        let event = by_session(id);
        assert_eq!(event["reason"], "admin", "{event}");
        assert_eq!(event["admin_uid"], admin, "{event}");
        assert_eq!(event["uid"], "dev", "{event}");
    }
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_forged_expired_or_wrong_kind_of_token_with_401() {
    let server =
        Server::start_with(&[ADMIN_GROUPS, ("TESSERA_TOKENS__ACCESS_TOKEN_TTL", "1s")]).await;
    let tokens = server.kubernetes_tokens().await;
    let access = text(&tokens, "access_token");
    let forged = {
        let (signed, signature) = access.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        format!("{signed}.{flipped}{}", &signature[1..])
    };
    let id_token = text(&tokens, "id_token");
    let refresh_token = text(&tokens, "refresh_token");
    // The token's `exp` is whole seconds; once the clock is there it is refused (no leeway).
    let exp = claims(&access)["exp"].as_i64().unwrap();
    while now_secs() < exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cases: [(&str, Option<&str>); 5] = [
        ("missing", None),
        ("forged signature", Some(&forged)),
        ("expired", Some(&access)),
        ("an id_token", Some(&id_token)),
        ("a refresh token", Some(&refresh_token)),
    ];
    for (what, token) in cases {
        for (method, path) in [
            (Method::GET, "/admin/v1/sessions"),
            (Method::DELETE, "/admin/v1/sessions/0123456789abcdef"),
            (Method::POST, "/admin/v1/users/dev/disable"),
            (Method::POST, "/admin/v1/users/dev/enable"),
        ] {
            let answer = api(&server, method.clone(), path, token).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{what}, {method} {path}: {}",
                answer.body
            );
            assert_eq!(answer.error(), "invalid_token", "{what}");
            assert_eq!(
                answer.header("www-authenticate"),
                Some(r#"Bearer error="invalid_token""#)
            );
            assert_eq!(answer.header("cache-control"), Some("no-store"));
        }
    }
    let (status, _) = server.refresh(&refresh_token).await;
    assert_eq!(status, StatusCode::OK, "nothing was disabled nor ended");
}

#[tokio::test]
async fn a_disabled_person_cannot_refresh_nor_sign_in_until_enabled_and_a_non_admin_gets_403() {
    let dir = tempfile::tempdir().unwrap();
    let hash = tessera::secret::hash_password(PASSWORD).unwrap();
    let person = |name: &str, groups: &[&str]| json!({"username": name, "password_hash": hash, "groups": groups});
    let users = json!({"users": [person("dev", &["dev", "admins"]), person("alice", &["dev"])]});
    write_private(&dir.path().join("users.yaml"), users.to_string());
    let server = Server::start_in(dir, &[("TESSERA_ADMIN__GROUPS", "[admins]")]).await;
    let admin_token = text(&server.kubernetes_tokens().await, "access_token");

    // A valid token of someone outside `admin.groups`: 403, and nothing happens.
    let alice = sign_in(&server, "alice").await;
    let refused = api(
        &server,
        Method::POST,
        "/admin/v1/users/dev/disable",
        Some(&text(&alice, "access_token")),
    )
    .await;
    assert_eq!(
        (refused.status, refused.error()),
        (StatusCode::FORBIDDEN, "insufficient_scope"),
        "{}",
        refused.body
    );
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );
    let listing = api(
        &server,
        Method::GET,
        "/admin/v1/sessions",
        Some(&text(&alice, "access_token")),
    )
    .await;
    assert_eq!(listing.status, StatusCode::FORBIDDEN);

    // Disabled from the command line while the server runs.
    let said = cli_ok(&server, &[], &["users", "disable", "alice"]);
    assert!(
        said.contains("disabled alice: 1 session and 1 SSO session ended"),
        "{said}"
    );
    let (status, body) = server.refresh(&text(&alice, "refresh_token")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let login = server
        .submit_login_as(
            &server.new_browser(),
            &AuthParams::kubernetes(),
            "alice",
            PASSWORD,
        )
        .await;
    assert_eq!(
        login.status(),
        StatusCode::FORBIDDEN,
        "the login form says the account is disabled"
    );
    let disabled = server.audit_events("SessionRevoked", 1).await;
    let event = disabled.iter().find(|e| e["uid"] == "alice").unwrap();
    assert_eq!(
        (event["reason"].as_str(), event["admin_uid"].as_str()),
        (Some("user_disabled"), Some("cli")),
        "{event}"
    );
    assert_eq!(
        event["source_ip"],
        Value::Null,
        "the command line has no address"
    );
    let failed = server.audit_events("LoginFailed", 1).await;
    assert!(
        failed
            .iter()
            .any(|e| e["uid"] == "alice" && e["reason"] == "user_disabled"),
        "{failed:?}"
    );

    // Enabled again: alice signs in; then disabled and enabled through the API.
    let said = cli_ok(&server, &[], &["users", "enable", "alice"]);
    assert!(said.contains("enabled alice"), "{said}");
    let alice = sign_in(&server, "alice").await;
    let disable = api(
        &server,
        Method::POST,
        "/admin/v1/users/alice/disable",
        Some(&admin_token),
    )
    .await;
    assert_eq!(disable.status, StatusCode::OK, "{}", disable.body);
    assert_eq!(
        disable.body["ended_sessions"],
        json!([sid(&alice)]),
        "{}",
        disable.body
    );
    assert_eq!(disable.body["disabled"], true);
    let (status, _) = server.refresh(&text(&alice, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let event = server
        .audit_events("SessionRevoked", 2)
        .await
        .into_iter()
        .find(|e| e["session_id"] == sid(&alice))
        .unwrap();
    assert_eq!(
        (event["reason"].as_str(), event["admin_uid"].as_str()),
        (Some("user_disabled"), Some("dev")),
        "{event}"
    );
    let enable = api(
        &server,
        Method::POST,
        "/admin/v1/users/alice/enable",
        Some(&admin_token),
    )
    .await;
    assert_eq!(enable.body["was_disabled"], true, "{}", enable.body);
    sign_in(&server, "alice").await;
    // The disabling and enabling themselves are audited, whoever had sessions.
    for (kind, admins) in [
        ("UserDisabled", ["cli", "dev"]),
        ("UserEnabled", ["cli", "dev"]),
    ] {
        let events = server.audit_events(kind, 2).await;
        let by: Vec<&str> = events
            .iter()
            .map(|e| {
                assert_eq!(e["uid"], "alice", "{e}");
                e["admin_uid"].as_str().unwrap()
            })
            .collect();
        assert_eq!(by, admins, "{kind}");
    }

    // Nobody by that name: 404 from the API, one sentence from the CLI.
    let nobody = api(
        &server,
        Method::POST,
        "/admin/v1/users/nobody/disable",
        Some(&admin_token),
    )
    .await;
    assert_eq!(
        (nobody.status, nobody.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let output = cli(&server, &[], &["users", "disable", "nobody"]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("no local user `nobody`"), "{error}");
}

/// `name` signs in at the login form in a fresh browser, as kubectl's client; the tokens.
async fn sign_in(server: &Server, name: &str) -> Value {
    let auth = AuthParams::kubernetes();
    let response = server
        .submit_login_as(&server.new_browser(), &auth, name, PASSWORD)
        .await;
    assert!(
        response.status().is_redirection(),
        "{name} signs in: {}",
        response.status()
    );
    server
        .exchange(&code_from(&location(&response)), &auth)
        .await
}

/// An admin API request with an optional bearer token.
async fn api(server: &Server, method: Method, path: &str, token: Option<&str>) -> Answer {
    let mut request = server.http.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Answer::read(request.send().await.unwrap()).await
}

/// Runs `tessera ARGS --data-dir DIR` with `env`, as an admin on the server's host would.
fn cli(server: &Server, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .arg("--data-dir")
        .arg(server.dir.path())
        .envs(env.iter().copied())
        .env("TESSERA_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("the tessera binary runs")
}

/// [`cli`] that must succeed; its standard output.
fn cli_ok(server: &Server, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = cli(server, env, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn cli_json(server: &Server, env: &[(&str, &str)], args: &[&str]) -> Value {
    serde_json::from_str(&cli_ok(server, env, args)).unwrap()
}

/// The session id of a token answer.
fn sid(tokens: &Value) -> String {
    claims(&text(tokens, "id_token"))["sid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The ids of a listing, in its order.
fn ids(listing: &Value) -> Vec<String> {
    listing["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("a listing: {listing}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

fn sorted<const N: usize>(ids: [&String; N]) -> Vec<String> {
    let mut ids: Vec<String> = ids.into_iter().cloned().collect();
    ids.sort();
    ids
}

fn now_secs() -> i64 {
    // The test's own clock, to wait for a token's `exp`; the server shares the machine's.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}
