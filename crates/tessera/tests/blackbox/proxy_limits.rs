//! Issue 11, the proxy's low items: how many cookie chunks a session is read from, how long an
//! `rd` may be and how many logins a browser may have under way, sign-out only on a same-site
//! post, and an external provider that must be https (off loopback) and whose every id_token,
//! refreshed ones included, is verified.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::jwt::{Algorithm, SigningKey};
use tessera_core::seal;

use crate::cluster::free_port;
use crate::proxy::{ProxyBrowser, start_proxy};
use crate::proxy_external::StandaloneProxy;
use crate::support::{self, Server};
use crate::upstream::Upstream;

const COOKIE_NAME: &str = "_tessera_proxy";

/// A provider whose proxy seals sessions into the cookie, with a key the test knows.
async fn cookie_store_proxy(upstream: &Upstream) -> Server {
    let key = STANDARD.encode([5u8; 32]);
    start_proxy(
        upstream,
        &[
            ("TESSERA_PROXY__SESSION__STORE", "cookie"),
            ("TESSERA_PROXY__COOKIE__SECRET", &key),
        ],
    )
    .await
}

/// `Set-Cookie` values of an answer.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// A request to the proxy carrying exactly `cookies`.
async fn with_cookies(
    server: &Server,
    path: &str,
    cookies: &[(String, String)],
) -> reqwest::Response {
    let base = server.proxy.as_deref().unwrap();
    let header: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
    support::client(&server.ca, false)
        .get(format!("{base}{path}"))
        .header(COOKIE, header.join("; "))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_session_in_more_chunks_than_the_cap_is_no_session_and_is_cleared() {
    let upstream = Upstream::start().await;
    let server = cookie_store_proxy(&upstream).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    browser.log_in("/").await;
    let sealed = browser.cookies()[COOKIE_NAME].clone();
    // The same valid session, re-split into chunks of a given count.
    let chunked = |count: usize| {
        let room = sealed.len().div_ceil(count) + COOKIE_NAME.len() + 4;
        let chunks = seal::split(COOKIE_NAME, &sealed, room);
        assert_eq!(chunks.len(), count, "{room}");
        chunks
    };

    let within = chunked(seal::MAX_CHUNKS);
    let answer = with_cookies(&server, "/echo", &within).await;
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "a session in the cap's chunks is read"
    );

    let over = chunked(seal::MAX_CHUNKS + 8);
    let answer = with_cookies(&server, "/echo", &over).await;
    assert_eq!(
        answer.status(),
        StatusCode::UNAUTHORIZED,
        "more chunks than a session can have"
    );
    let cleared = set_cookies(&answer);
    assert!(
        cleared.iter().any(|c| c.starts_with("_tessera_proxy_0=;")),
        "{cleared:?}"
    );
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );

    // 16,000 one-byte chunks: no session, a bounded answer, and the proxy still serves.
    let flood: Vec<(String, String)> = (0..16_000)
        .map(|i| (format!("{COOKIE_NAME}_{i}"), "x".to_owned()))
        .collect();
    let answer = with_cookies(&server, "/echo", &flood).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookies(&answer).len() <= seal::MAX_CHUNKS + 1);
    let answer = with_cookies(&server, "/oauth2/sign_out", &flood).await;
    assert_eq!(answer.status(), StatusCode::FOUND, "nothing to confirm");
    assert!(set_cookies(&answer).len() <= seal::MAX_CHUNKS + 1);
    let answer = with_cookies(&server, "/echo", &within).await;
    assert_eq!(answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_long_rd_goes_home_and_the_login_state_cookie_stays_below_4_kb() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let long = format!("/{}", "a".repeat(5000));
    let browser = ProxyBrowser::new(&server, &base);
    let by_query = browser.request(Method::GET, &format!("/oauth2/start?rd={long}"));
    let by_header = browser
        .request(Method::GET, "/oauth2/sign_in")
        .header("x-auth-request-redirect", &long);
    for start in [by_query, by_header] {
        let start = browser.send(start).await;
        assert_eq!(start.status(), StatusCode::FOUND);
        for cookie in set_cookies(&start) {
            assert!(cookie.len() <= 4096, "a {}-byte cookie", cookie.len());
        }
        let callback = browser.provider_login(&support::location(&start)).await;
        let back = browser.navigate(&callback).await;
        assert_eq!(back.status(), StatusCode::FOUND, "the login finishes");
        assert_eq!(support::location(&back), "/", "the long rd is dropped");
    }
    // An rd just under the cap is kept.
    let fits = format!("/{}", "b".repeat(2000));
    let start = browser.navigate(&format!("/oauth2/start?rd={fits}")).await;
    let callback = browser.provider_login(&support::location(&start)).await;
    assert_eq!(support::location(&browser.navigate(&callback).await), fits);
}

#[tokio::test]
async fn a_browser_keeps_at_most_eight_logins_under_way_the_newest() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    let mut authorizations = Vec::new();
    for tab in 0..12 {
        // Each login a millisecond apart, so their expiries order them (this test browser
        // sends cookies by name, not oldest first as browsers do).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let start = browser
            .navigate(&format!("/oauth2/start?rd=/tab{tab}"))
            .await;
        authorizations.push(support::location(&start));
    }
    let states = || {
        browser
            .cookies()
            .into_keys()
            .filter(|name| name.contains("_csrf_"))
            .count()
    };
    assert_eq!(states(), 8, "the oldest logins' states are cleared");
    let callback = browser.provider_login(&authorizations[0]).await;
    assert_eq!(
        browser.navigate(&callback).await.status(),
        StatusCode::BAD_REQUEST,
        "the oldest login cannot finish"
    );
    for (tab, authorize) in authorizations.iter().enumerate().skip(4) {
        let callback = browser.provider_login(authorize).await;
        let back = browser.navigate(&callback).await;
        assert_eq!(back.status(), StatusCode::FOUND, "tab {tab} comes back");
        assert_eq!(support::location(&back), format!("/tab{tab}"));
    }
    assert_eq!(states(), 0);
}

#[tokio::test]
async fn sign_out_is_confirmed_and_a_post_from_another_site_is_refused() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    browser.log_in("/").await;

    // An <img src> or a link from elsewhere: a page that asks, and the session lives on.
    let page = browser
        .navigate("/oauth2/sign_out?rd=/bye%3Fa%3D1%26b%3D2")
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(set_cookies(&page).iter().all(|c| !c.contains("Max-Age=0")));
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script"), "{html}");
    assert_eq!(
        support::hidden_fields(&html),
        [("rd".to_owned(), "/bye?a=1&b=2".to_owned())],
        "the page carries rd"
    );
    assert_eq!(browser.fetch("/echo").await.status(), StatusCode::OK);

    // A form on another site posting here.
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("origin", "http://127.0.0.1.evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let post = browser
            .request(Method::POST, "/oauth2/sign_out?rd=/bye")
            .header(name, value);
        let answer = browser.send(post).await;
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
        assert_eq!(browser.fetch("/echo").await.status(), StatusCode::OK);
    }

    // The page's own form, posted from the proxy's origin, signs out and goes to rd.
    let out = browser.sign_out("/oauth2/sign_out?rd=/bye%3Fa%3D1").await;
    assert_eq!(out.status(), StatusCode::FOUND);
    assert_eq!(
        browser.follow_sign_out(&support::location(&out)).await,
        format!("{base}/bye?a=1")
    );
    assert_eq!(
        browser.fetch("/echo").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["reason"], "revocation_endpoint");

    // A script (no Origin, no Sec-Fetch-Site) may post, with rd in the form or the query.
    browser.log_in("/").await;
    let post = browser
        .request(Method::POST, "/oauth2/sign_out")
        .form(&[("rd", "/script")]);
    let out = browser.send(post).await;
    assert_eq!(out.status(), StatusCode::FOUND);
    assert_eq!(
        browser.follow_sign_out(&support::location(&out)).await,
        format!("{base}/script")
    );
    assert_eq!(
        browser.fetch("/echo").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Same-site fetches without Origin pass; signed out already, GET goes straight to rd.
    let post = browser
        .request(Method::POST, "/oauth2/sign_out?rd=/again")
        .header("sec-fetch-site", "same-origin");
    assert_eq!(browser.send(post).await.status(), StatusCode::FOUND);
    let get = browser.navigate("/oauth2/sign_out?rd=/again").await;
    assert_eq!(get.status(), StatusCode::FOUND);
    assert_eq!(support::location(&get), "/again");
    let foreign = browser
        .request(Method::POST, "/oauth2/sign_out")
        .header(ORIGIN, "https://evil.example");
    assert_eq!(
        browser.send(foreign).await.status(),
        StatusCode::FORBIDDEN,
        "refused with or without a session"
    );
}

#[test]
fn a_plain_http_issuer_off_loopback_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tessera.yaml");
    support::write_private(
        &config,
        "proxy:
  routes: [{upstream: 'http://127.0.0.1:1'}]
  session: {store: cookie}
  cookie: {secret: 'BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU='}
  provider: {issuer: 'http://idp.example.com', client_id: rp, client_secret: s}
",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A proxy that accepted the issuer would announce its address and serve on.
    let mut announced = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut announced)
        .unwrap();
    if !announced.is_empty() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(announced, "", "the proxy must not start");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("proxy.provider.issuer"), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
}

/// What the hostile provider answers to a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresh {
    /// A properly signed id_token for the same user.
    Honest,
    /// Signed properly, but for another user.
    OtherSubject,
    /// `alg: none`, no signature.
    Unsigned,
    /// Signed by a key that is not in the provider's JWKS, under the JWKS key's `kid`.
    ForeignKey,
    /// Signed properly, for another client.
    OtherAudience,
    /// Signed properly, expired an hour ago.
    Expired,
}

/// An OpenID Connect provider in the test process (plain HTTP on loopback): it logs anyone in
/// as `alice` at once and answers refreshes as `refresh` says.
struct FakeProvider {
    issuer: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

struct FakeState {
    issuer: String,
    key: SigningKey,
    foreign: SigningKey,
    refresh: Mutex<Refresh>,
    nonces: Mutex<HashMap<String, String>>,
    refreshes: Mutex<usize>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let (key, _) = SigningKey::generate(Algorithm::ES256, "k1".into()).unwrap();
        let (foreign, _) = SigningKey::generate(Algorithm::ES256, "k1".into()).unwrap();
        let state = Arc::new(FakeState {
            issuer: issuer.clone(),
            key,
            foreign,
            refresh: Mutex::new(Refresh::Honest),
            nonces: Mutex::new(HashMap::new()),
            refreshes: Mutex::new(0),
        });
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeProvider {
            issuer,
            state,
            task,
        }
    }

    fn answer_refreshes(&self, how: Refresh) {
        *self.state.refresh.lock().unwrap() = how;
    }

    fn refreshes(&self) -> usize {
        *self.state.refreshes.lock().unwrap()
    }
}

async fn discovery(State(op): State<Arc<FakeState>>) -> axum::Json<Value> {
    let issuer = &op.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
    }))
}

async fn jwks(State(op): State<Arc<FakeState>>) -> axum::Json<Value> {
    axum::Json(json!({"keys": [op.key.public_jwk()]}))
}

async fn authorize(
    State(op): State<Arc<FakeState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Redirect {
    let code = format!("code-{}", op.nonces.lock().unwrap().len());
    op.nonces
        .lock()
        .unwrap()
        .insert(code.clone(), query["nonce"].clone());
    let mut back = url::Url::parse(&query["redirect_uri"]).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &query["state"]);
    Redirect::to(back.as_str())
}

async fn token(
    State(op): State<Arc<FakeState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let now = SystemClock.now().as_secs();
    let mut claims = json!({
        "iss": op.issuer, "sub": "alice", "aud": "rp", "iat": now, "exp": now + 300,
        "preferred_username": "alice",
    });
    let id_token = if form["grant_type"] == "authorization_code" {
        claims["nonce"] = json!(op.nonces.lock().unwrap()[&form["code"]]);
        op.key.sign("JWT", &claims).unwrap()
    } else {
        *op.refreshes.lock().unwrap() += 1;
        let how = *op.refresh.lock().unwrap();
        match how {
            Refresh::Honest => op.key.sign("JWT", &claims).unwrap(),
            Refresh::OtherSubject => {
                claims["sub"] = json!("mallory");
                claims["preferred_username"] = json!("mallory");
                op.key.sign("JWT", &claims).unwrap()
            }
            Refresh::Unsigned => {
                claims["sub"] = json!("mallory");
                let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
                let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
                format!("{header}.{payload}.")
            }
            Refresh::ForeignKey => {
                claims["sub"] = json!("mallory");
                op.foreign.sign("JWT", &claims).unwrap()
            }
            Refresh::OtherAudience => {
                claims["aud"] = json!("someone-else");
                op.key.sign("JWT", &claims).unwrap()
            }
            Refresh::Expired => {
                claims["iat"] = json!(now - 7200);
                claims["exp"] = json!(now - 3600);
                op.key.sign("JWT", &claims).unwrap()
            }
        }
    };
    axum::Json(json!({
        "access_token": "opaque",
        "token_type": "Bearer",
        "id_token": id_token,
        "refresh_token": format!("refresh-{now}"),
    }))
    .into_response()
}

/// A browser of `tessera proxy` whose provider logs it in without a form.
struct PlainBrowser {
    http: reqwest::Client,
    base: String,
    cookies: Mutex<HashMap<String, String>>,
}

impl PlainBrowser {
    fn new(base: &str, ca: &std::path::Path) -> PlainBrowser {
        PlainBrowser {
            http: support::client(ca, false),
            base: base.to_owned(),
            cookies: Mutex::new(HashMap::new()),
        }
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        };
        let header: Vec<String> = self
            .cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let response = self
            .http
            .get(url)
            .header(COOKIE, header.join("; "))
            .send()
            .await
            .unwrap();
        let mut jar = self.cookies.lock().unwrap();
        for cookie in set_cookies(&response) {
            let (pair, attributes) = cookie.split_once(';').unwrap_or((&cookie, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
        response
    }

    /// Logs in through the provider; answers where the proxy sends the browser at last.
    async fn log_in(&self) -> String {
        let start = self.get("/oauth2/start?rd=/home").await;
        let authorize = self.get(&support::location(&start)).await;
        let back = self.get(&support::location(&authorize)).await;
        assert_eq!(back.status(), StatusCode::FOUND, "{:?}", back.text().await);
        support::location(&back)
    }
}

#[tokio::test]
async fn every_refreshed_id_token_is_verified_and_a_bad_one_ends_the_session() {
    let upstream = Upstream::start().await;
    let provider = FakeProvider::start().await;
    let ca = rcgen::generate_simple_self_signed(vec!["unused.invalid".to_owned()]).unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    // refresh_after 0s: every request refreshes, so every request brings a new id_token.
    let proxy = StandaloneProxy::start(&format!(
        "proxy:
  listen: 127.0.0.1:{port}
  routes: [{{upstream: '{upstream}'}}]
  session: {{store: cookie, refresh_after: 0s}}
  cookie: {{secret: '{secret}'}}
  provider: {{issuer: '{issuer}', client_id: rp, client_secret: s, certificate_authority: '{ca}'}}
",
        port = free_port(),
        upstream = upstream.url(),
        secret = STANDARD.encode([3u8; 32]),
        issuer = provider.issuer,
        ca = ca_file.display(),
    ));

    let browser = PlainBrowser::new(&proxy.url, &ca_file);
    assert_eq!(browser.log_in().await, "/home");
    let echo: Value = browser.get("/echo").await.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice");
    assert_eq!(
        provider.refreshes(),
        1,
        "an honest refresh keeps the session"
    );

    for hostile in [
        Refresh::OtherSubject,
        Refresh::Unsigned,
        Refresh::ForeignKey,
        Refresh::OtherAudience,
        Refresh::Expired,
    ] {
        provider.answer_refreshes(Refresh::Honest);
        let browser = PlainBrowser::new(&proxy.url, &ca_file);
        browser.log_in().await;
        assert_eq!(browser.get("/echo").await.status(), StatusCode::OK);
        provider.answer_refreshes(hostile);
        let before = provider.refreshes();
        let answer = browser.get("/echo").await;
        assert_eq!(provider.refreshes(), before + 1, "{hostile:?}: refreshed");
        assert_eq!(
            answer.status(),
            StatusCode::UNAUTHORIZED,
            "{hostile:?}: the session ends"
        );
        assert!(
            browser
                .cookies
                .lock()
                .unwrap()
                .keys()
                .all(|n| !n.starts_with(COOKIE_NAME)),
            "{hostile:?}: the session cookie is cleared"
        );
        provider.answer_refreshes(Refresh::Honest);
        assert_eq!(
            browser.get("/echo").await.status(),
            StatusCode::UNAUTHORIZED,
            "{hostile:?}: log in again"
        );
    }
}
