//! The harness: start `tessera serve --dev` on `127.0.0.1:0`, read the stable start-up lines,
//! poll `/healthz`, and kill the child by PID when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The dev user's password in every test.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running `tessera serve --dev`.
pub struct Server {
    child: Child,
    /// What the server wrote to stderr so far, line by line (also echoed to the test's).
    log: Arc<std::sync::Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    pub issuer: String,
    /// `http://ADDR` of the authenticating proxy, when the configuration has a `proxy:` section.
    pub proxy: Option<String>,
    pub ca: PathBuf,
    pub demo_secret: String,
    /// A client with a cookie jar that does not follow redirects: a browser, step by step.
    pub browser: reqwest::Client,
    /// A plain client without cookies.
    pub http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts with the dev defaults.
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// Starts with `TESSERA_*` environment overrides, e.g.
    /// `("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "5000")`.
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, env).await
    }

    /// Starts in an existing data directory (a restart).
    pub async fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("TESSERA_DEV_PASSWORD", PASSWORD)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the tessera binary starts");
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                kept.lock().unwrap().push(line);
            }
        });
        let (mut issuer, mut proxy) = (None, None);
        while issuer.is_none() {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("tessera prints `issuer: URL` at start");
            issuer = line.strip_prefix("issuer: ").map(str::to_owned);
            if let Some(url) = line.strip_prefix("proxy listening on ") {
                proxy = Some(url.to_owned());
            }
        }
        let issuer = issuer.unwrap();
        let ca = dir.path().join("ca.pem");
        let demo_secret = std::fs::read_to_string(dir.path().join("demo-client-secret"))
            .unwrap()
            .trim()
            .to_owned();
        let browser = client(&ca, true);
        let http = client(&ca, false);
        let server = Server {
            child,
            log,
            dir,
            issuer,
            proxy,
            ca,
            demo_secret,
            browser,
            http,
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tessera did not become healthy");
    }

    /// An absolute URL under the issuer.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Drives the login form like a browser and returns the authorization code.
    pub async fn login(&self, auth: &AuthParams<'_>) -> String {
        let location = self.authorize_with_password(auth, PASSWORD).await;
        code_from(&location)
    }

    /// Runs /authorize then the login form with `password`; returns the final `Location`.
    pub async fn authorize_with_password(&self, auth: &AuthParams<'_>, password: &str) -> String {
        let response = self
            .browser
            .get(self.url("/authorize"))
            .query(&auth.pairs())
            .send()
            .await
            .unwrap();
        if response.status().is_redirection() {
            return location(&response);
        }
        assert_eq!(response.status(), StatusCode::OK, "the login form is shown");
        let html = response.text().await.unwrap();
        let mut form = hidden_fields(&html);
        form.push(("username".into(), "dev".into()));
        form.push(("password".into(), password.into()));
        let response = self
            .browser
            .post(self.url("/login"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_redirection(),
            "login answered {}",
            response.status()
        );
        location(&response)
    }

    /// Exchanges a code at /token for a public client.
    pub async fn exchange(&self, code: &str, auth: &AuthParams<'_>) -> Value {
        let (status, body) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", auth.redirect_uri),
                ("client_id", auth.client_id),
                ("code_verifier", auth.verifier),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "code exchange: {body}");
        body
    }

    /// Logs in as `dev` with client `kubernetes` and returns the token response.
    pub async fn kubernetes_tokens(&self) -> Value {
        let auth = AuthParams::kubernetes();
        let code = self.login(&auth).await;
        self.exchange(&code, &auth).await
    }

    /// POSTs a form to /token.
    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        self.post_form("/token", form).await
    }

    /// Refreshes as client `kubernetes`.
    pub async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", "kubernetes"),
        ])
        .await
    }

    /// POSTs a form to a path under the issuer.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Every audit event written so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect()
    }

    /// Audit events of one kind, waiting briefly for the writer to flush.
    pub async fn audit_events(&self, kind: &str, at_least: usize) -> Vec<Value> {
        for _ in 0..100 {
            let found: Vec<Value> = self
                .audit()
                .into_iter()
                .filter(|e| e["event"] == kind)
                .collect();
            if found.len() >= at_least {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.audit()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has written to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the process to exit and answers how; panics if it is still running after a
    /// minute (a bound for a hung process, not a timing assertion).
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tessera did not exit within a minute");
    }

    /// Stops the server and hands back its data directory, for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }
}

/// The parameters of one authorization request.
pub struct AuthParams<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub verifier: &'a str,
    pub state: &'a str,
    pub nonce: &'a str,
}

impl AuthParams<'static> {
    /// kubectl's client on a random loopback port.
    pub fn kubernetes() -> AuthParams<'static> {
        AuthParams {
            client_id: "kubernetes",
            redirect_uri: "http://127.0.0.1:41234/callback",
            scope: "openid profile email groups",
            verifier: "a-verifier-that-is-long-enough-for-rfc-7636-section-4-1-xyz",
            state: "state-123",
            nonce: "nonce-456",
        }
    }
}

/// The S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The `Location` header of a redirect.
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .expect("a redirect has a Location")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The `code` query parameter of a redirect location.
pub fn code_from(location: &str) -> String {
    query_param(location, "code").unwrap_or_else(|| panic!("no code in {location}"))
}

/// A query parameter of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The hidden inputs of a form, in order.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|part| {
            let name = between(part, "name=\"", "\"")?;
            let value = between(part, "value=\"", "\"")?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// The claims of a JWT, unverified (the tests verify signatures separately).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A client trusting only the server's CA, not following redirects, optionally with cookies.
pub fn client(ca: &Path, cookies: bool) -> reqwest::Client {
    client_builder(ca).cookie_store(cookies).build().unwrap()
}

/// A client trusting only the server's CA, not following redirects.
pub fn client_builder(ca: &Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------------
// Helpers for the rotation, endpoint, bad-input and key tests.

/// The demo client's only registered redirect URI.
pub const DEMO_REDIRECT: &str = "http://127.0.0.1:8000/callback";

/// The demo client's registered post-logout redirect URI.
pub const DEMO_POST_LOGOUT: &str = "http://127.0.0.1:8000/";

impl AuthParams<'static> {
    /// The confidential client `demo` (it uses PKCE too, as a careful RP does).
    pub fn demo() -> AuthParams<'static> {
        AuthParams {
            client_id: "demo",
            redirect_uri: DEMO_REDIRECT,
            ..AuthParams::kubernetes()
        }
    }
}

impl AuthParams<'_> {
    /// The query parameters of /authorize, for tests that add or change one.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("client_id", self.client_id.to_owned()),
            ("redirect_uri", self.redirect_uri.to_owned()),
            ("response_type", "code".to_owned()),
            ("scope", self.scope.to_owned()),
            ("state", self.state.to_owned()),
            ("nonce", self.nonce.to_owned()),
            ("code_challenge", challenge(self.verifier)),
            ("code_challenge_method", "S256".to_owned()),
        ]
    }
}

/// A response read to the end: status, headers and the body as JSON (or a JSON string of the
/// text when it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Reads a response.
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The OAuth `error` code of the body.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("(no error field)")
    }
}

impl Server {
    /// A fresh browser: its own cookie jar, redirects not followed.
    pub fn new_browser(&self) -> reqwest::Client {
        client(&self.ca, true)
    }

    /// A client without cookies whose connections leave from `local` (e.g. 127.0.0.2, which
    /// reaches the server on 127.0.0.1 over loopback).
    pub fn client_from(&self, local: std::net::IpAddr) -> reqwest::Client {
        client_builder(&self.ca)
            .local_address(local)
            .build()
            .unwrap()
    }

    /// POSTs a form to a path under the issuer with `client`, optionally with an
    /// `Authorization` header value, and reads the whole answer.
    pub async fn post_as(
        &self,
        client: &reqwest::Client,
        path: &str,
        authorization: Option<&str>,
        form: &[(&str, &str)],
    ) -> Answer {
        let mut request = client.post(self.url(path)).form(form);
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        Answer::read(request.send().await.unwrap()).await
    }

    /// POSTs a form to a path under the issuer (no cookies) and reads the whole answer.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.post_as(&self.http, path, None, form).await
    }

    /// GETs a path under the issuer (no cookies) and reads the whole answer.
    pub async fn get(&self, path: &str) -> Answer {
        Answer::read(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    /// Refreshes as client `kubernetes` from a chosen client (and so a chosen source address).
    pub async fn refresh_from(&self, client: &reqwest::Client, refresh_token: &str) -> Answer {
        self.post_as(
            client,
            "/token",
            None,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", "kubernetes"),
            ],
        )
        .await
    }

    /// GET /authorize with exactly `query`, from `client`.
    pub async fn authorize_raw(
        &self,
        client: &reqwest::Client,
        query: &[(&str, String)],
    ) -> reqwest::Response {
        client
            .get(self.url("/authorize"))
            .query(query)
            .send()
            .await
            .unwrap()
    }

    /// Shows the login form in `browser` and submits it once as `dev` with `password`;
    /// returns the answer to POST /login.
    pub async fn submit_login(
        &self,
        browser: &reqwest::Client,
        auth: &AuthParams<'_>,
        password: &str,
    ) -> reqwest::Response {
        self.submit_login_as(browser, auth, "dev", password).await
    }

    /// Whether `/authorize` in `browser` answers with a code at once: a live SSO session.
    pub async fn signed_in(&self, browser: &reqwest::Client) -> bool {
        let response = self
            .authorize_raw(browser, &AuthParams::kubernetes().pairs())
            .await;
        match response.status() {
            StatusCode::OK => false,
            status if status.is_redirection() => {
                code_from(&location(&response));
                true
            }
            status => panic!("/authorize answered {status}"),
        }
    }

    /// Logs in with client `demo` and exchanges the code with `client_secret_basic`.
    pub async fn demo_tokens(&self) -> Value {
        let auth = AuthParams::demo();
        let code = self.login(&auth).await;
        let answer = self
            .post_as(
                &self.http,
                "/token",
                Some(&basic(auth.client_id, &self.demo_secret)),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", auth.redirect_uri),
                    ("code_verifier", auth.verifier),
                ],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "demo exchange: {}",
            answer.body
        );
        answer.body
    }

    /// The JWKS document.
    pub async fn jwks(&self) -> Value {
        let answer = self.get("/jwks").await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.body
    }

    /// Verifies `jwt` against the server's current JWKS, for this issuer and `audience`.
    pub async fn verify(&self, jwt: &str, audience: &str) -> Result<Value, String> {
        verify_jwt(&self.jwks().await, jwt, &self.issuer, audience)
    }

    /// Runs `tessera` with `args` against this server's data directory and waits for it.
    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        all.push("--data-dir".into());
        all.push(self.dir.path().into());
        tessera_cli(&all)
    }
}

/// A string field of a token answer.
pub fn text(tokens: &Value, field: &str) -> String {
    tokens[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {tokens}"))
        .to_owned()
}

/// `Basic base64(id:secret)` (RFC 6749 §2.3.1; the ids and secrets used here need no
/// form-encoding).
pub fn basic(id: &str, secret: &str) -> String {
    use base64::engine::general_purpose::STANDARD;
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// Verifies a JWT's signature with the JWKS key its header names (an independent
/// implementation: the `jsonwebtoken` crate), then its issuer, audience and expiry; returns
/// the claims.
pub fn verify_jwt(jwks: &Value, jwt: &str, issuer: &str, audience: &str) -> Result<Value, String> {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| format!("JWKS: {e}"))?;
    let header = decode_header(jwt).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("the JWT names no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK {kid}: {e}"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    decode::<Value>(jwt, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("verification with {kid}: {e}"))
}

/// The header of a JWT, unverified.
pub fn jwt_header(jwt: &str) -> Value {
    let header = jwt.split('.').next().expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

/// Writes `contents` to `path` readable by its owner only, as tessera requires of its
/// configuration and users files (`std::fs::write` creates 0644 under the usual umask).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    file.write_all(contents.as_ref()).unwrap();
}

/// Runs the `tessera` binary with `args` (no stdin) and waits for it.
pub fn tessera_cli(args: &[std::ffi::OsString]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("the tessera binary runs")
}

impl Server {
    /// A browser (cookie jar, redirects not followed) whose connections leave from `local`.
    pub fn browser_from(&self, local: std::net::IpAddr) -> reqwest::Client {
        client_builder(&self.ca)
            .local_address(local)
            .cookie_store(true)
            .build()
            .unwrap()
    }

    /// Like [`Server::submit_login`], as any user name.
    pub async fn submit_login_as(
        &self,
        browser: &reqwest::Client,
        auth: &AuthParams<'_>,
        username: &str,
        password: &str,
    ) -> reqwest::Response {
        let response = self.authorize_raw(browser, &auth.pairs()).await;
        assert_eq!(response.status(), StatusCode::OK, "the login form is shown");
        let mut form = hidden_fields(&response.text().await.unwrap());
        form.push(("username".into(), username.into()));
        form.push(("password".into(), password.into()));
        browser
            .post(self.url("/login"))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text of /metrics.
    pub async fn metrics(&self) -> String {
        let answer = self.get("/metrics").await;
        assert_eq!(answer.status, StatusCode::OK);
        match answer.body {
            Value::String(text) => text,
            other => panic!("metrics are text, not {other}"),
        }
    }
}

/// The value of the sample `name` (with its labels, exactly as rendered) in Prometheus text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Writes a new test CA (`ca.pem`) and a server certificate it signs for 127.0.0.1 and
/// localhost (`server.pem`, key `server-key.pem`) into `dir`, for servers other than tessera
/// that tests talk TLS to (tessera makes its own with `--dev`).
pub fn write_test_pki(dir: &Path, ca_name: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    write_private(&dir.join("server-key.pem"), key.serialize_pem());
}
