//! The harness: start `tessera serve --dev` on `127.0.0.1:0`, read the stable start-up lines,
//! poll `/healthz`, and kill the child by PID when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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
    pub dir: tempfile::TempDir,
    pub issuer: String,
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
            .stderr(Stdio::inherit());
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
        let mut issuer = None;
        while issuer.is_none() {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("tessera prints `issuer: URL` at start");
            issuer = line.strip_prefix("issuer: ").map(str::to_owned);
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
            dir,
            issuer,
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
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return;
                }
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
            .query(&auth.query())
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

impl AuthParams<'_> {
    fn query(&self) -> Vec<(&str, String)> {
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

fn client(ca: &std::path::Path, cookies: bool) -> reqwest::Client {
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
        .cookie_store(cookies)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
