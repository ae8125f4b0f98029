//! A provider for unit tests across the crate: an [`App`] on a temporary SQLite store with a
//! [`ManualClock`], freshly generated keys, the dev clients and one user, plus the steps most
//! tests repeat (sign in, get a code, exchange it), a reader of the audit log and a way to send a
//! request through [`crate::http::router`] without a socket (STYLE.md, test layer 4).
//!
//! The configuration goes through [`Config::load`] like the server's, so a test changes a key
//! with the same `TESSERA_*` overrides the black-box tests use.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tessera_core::clock::{ManualClock, UnixMillis};
use tessera_core::id::ClientId;
use tessera_core::pkce;
use tower::ServiceExt as _;

use super::token::TokenResponse;
use super::{App, AppError, AppParts, AuthRequest, ClientCredentials, RequestContext};
use crate::audit::Audit;
use crate::config::{Client, Config};
use crate::connector::Connectors;
use crate::users::{User, Users, UsersFile};

/// The issuer of every test provider.
pub(crate) const ISSUER: &str = "https://tessera.test";
/// The one user.
pub(crate) const USER: &str = "dev";
/// Their password.
pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// The public client (PKCE required, loopback redirects on any port).
pub(crate) const PUBLIC_CLIENT: &str = "kubernetes";
/// Its registered redirect URI.
pub(crate) const PUBLIC_REDIRECT: &str = "http://127.0.0.1/callback";
/// The confidential client.
pub(crate) const CONFIDENTIAL_CLIENT: &str = "demo";
/// Its secret (stored as a SHA-256 hash, so checking it costs nothing).
pub(crate) const CONFIDENTIAL_SECRET: &str = "demo-client-secret-of-the-tests";
/// Its registered redirect URI.
pub(crate) const CONFIDENTIAL_REDIRECT: &str = "http://127.0.0.1:8000/callback";
/// Its registered post-logout redirect URI.
pub(crate) const POST_LOGOUT_REDIRECT: &str = "http://127.0.0.1:8000/";
/// The PKCE verifier of every test authorization request.
pub(crate) const VERIFIER: &str = "the-pkce-verifier-of-the-tests-0123456789abcdef";
/// Where every test clock starts: a fixed instant, so no test depends on the day it runs.
pub(crate) const START: UnixMillis = UnixMillis(1_700_000_000_000);

/// A provider with a hand-moved clock, in its own temporary directory.
pub(crate) struct TestApp {
    /// The provider.
    pub(crate) app: Arc<App>,
    /// Its clock: moves only when a test advances it.
    pub(crate) clock: Arc<ManualClock>,
    /// Where every request of the test comes from.
    pub(crate) ctx: RequestContext,
    /// Holds the configuration, database and audit log until the test ends.
    dir: TempDir,
    /// Audit lines the start wrote (the first key's `KeyRotated`), left out of [`TestApp::audit`].
    started_with: usize,
}

/// An answer of the router, read whole.
pub(crate) struct Answer {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its body as text.
    pub(crate) body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    /// A provider with the test defaults.
    pub(crate) async fn start() -> TestApp {
        TestApp::start_with(&[]).await
    }

    /// A provider with `TESSERA_*` overrides, e.g.
    /// `("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "5000")`.
    pub(crate) async fn start_with(env: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), env);
        let store = crate::storage::open(&config.storage)
            .await
            .expect("the test store opens");
        let audit = Audit::start(config.audit_file.as_deref()).expect("the audit log opens");
        let users = Users::load(&dir.path().join("users.yaml")).expect("the users file loads");
        let clock = Arc::new(ManualClock::at(START));
        let connectors = Connectors::new(&config.connectors, config.group_mapping.clone())
            .expect("the connectors start");
        let app = App::new(AppParts {
            config,
            issuer: ISSUER.into(),
            store,
            clock: Arc::clone(&clock) as _,
            audit,
            users,
            connectors,
        })
        .await
        .expect("the test provider starts");
        let ctx = RequestContext {
            ip: "192.0.2.1".into(),
            user_agent: Some("unit-test".into()),
        };
        let mut started = TestApp {
            app: Arc::new(app),
            clock,
            ctx,
            dir,
            started_with: 0,
        };
        started.started_with = started.audit().len();
        started
    }

    /// Moves the provider's clock forward.
    pub(crate) fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// A registered client.
    pub(crate) fn client(&self, id: &str) -> &Client {
        self.app
            .client(id)
            .unwrap_or_else(|| panic!("client `{id}` is registered"))
    }

    /// The credentials of the confidential client, sent with its secret.
    pub(crate) fn confidential_credentials() -> ClientCredentials {
        ClientCredentials {
            id: ClientId::new(CONFIDENTIAL_CLIENT),
            secret: Some(CONFIDENTIAL_SECRET.into()),
        }
    }

    /// A validated authorization request of `client_id` with its registered redirect URI,
    /// `scope`, a nonce and the PKCE challenge of [`VERIFIER`].
    pub(crate) fn request(&self, client_id: &str, scope: &str) -> AuthRequest {
        let redirect = redirect_of(client_id);
        let challenge = pkce::s256_challenge(VERIFIER);
        let params = [
            ("client_id", client_id),
            ("redirect_uri", redirect),
            ("response_type", "code"),
            ("scope", scope),
            ("nonce", "n-0S6_WzA2Mj"),
            ("state", "af0ifjsldkj"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        self.app
            .validate_authorization(|name| {
                params
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .expect("the test request is valid")
    }

    /// Signs the user in and issues a code for `request`.
    pub(crate) async fn code(&self, request: &AuthRequest) -> String {
        let outcome = self
            .app
            .login(None, USER, PASSWORD, &self.ctx)
            .await
            .expect("the test user signs in");
        let location = self
            .app
            .issue_code(request, &outcome.sso)
            .await
            .expect("a code is issued");
        query_value(&location, "code").unwrap_or_else(|| panic!("a code in {location}"))
    }

    /// A whole sign-in of the public client: login, code, exchange.
    pub(crate) async fn tokens(&self) -> TokenResponse {
        self.tokens_for(PUBLIC_CLIENT).await
    }

    /// A whole sign-in of `client_id` with the scope `openid profile email groups`.
    pub(crate) async fn tokens_for(&self, client_id: &str) -> TokenResponse {
        let request = self.request(client_id, "openid profile email groups");
        let code = self.code(&request).await;
        self.exchange(client_id, &code)
            .await
            .expect("the code is exchanged")
    }

    /// Exchanges `code` as `client_id` with its registered redirect URI and [`VERIFIER`].
    pub(crate) async fn exchange(
        &self,
        client_id: &str,
        code: &str,
    ) -> Result<TokenResponse, AppError> {
        let client = self.client(client_id);
        let redirect = redirect_of(client_id);
        self.app
            .exchange_code(client, code, Some(redirect), Some(VERIFIER), &self.ctx)
            .await
    }

    /// Refreshes `token` as `client_id`, keeping the scope.
    pub(crate) async fn refresh(
        &self,
        client_id: &str,
        token: &str,
    ) -> Result<TokenResponse, AppError> {
        let client = self.client(client_id);
        self.app.refresh(client, token, None, &self.ctx).await
    }

    /// Every audit line written since the start, as JSON.
    pub(crate) fn audit(&self) -> Vec<Value> {
        self.app.audit.flush();
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .skip(self.started_with)
            .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
            .collect()
    }

    /// The `event` names of the audit log so far, in order.
    pub(crate) fn events(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter_map(|line| line["event"].as_str().map(str::to_owned))
            .collect()
    }

    /// Sends one request through the provider's router, in process.
    pub(crate) async fn send(&self, request: Request<Body>) -> Answer {
        let router = crate::http::router(Arc::clone(&self.app));
        let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("the body is read");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

/// A request to the router: `method` on `uri` with `headers`, and a form `body` if given.
pub(crate) fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match form {
        Some(form) => {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
            Body::from(form.to_owned())
        }
        None => Body::empty(),
    };
    builder.body(body).expect("a well-formed test request")
}

/// `Authorization: Basic` for `id` and `secret` (RFC 6749 §2.3.1; the test ids and secrets
/// need no form encoding).
pub(crate) fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The registered redirect URI of a test client.
pub(crate) fn redirect_of(client_id: &str) -> &'static str {
    match client_id {
        PUBLIC_CLIENT => PUBLIC_REDIRECT,
        _ => CONFIDENTIAL_REDIRECT,
    }
}

/// The reason of an `invalid_grant`; any other outcome fails the test.
pub(crate) fn grant_refusal<T: std::fmt::Debug>(result: Result<T, AppError>) -> &'static str {
    match result {
        Err(AppError::InvalidGrant { reason }) => reason,
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

/// The claims of a JWT, read without verifying it (the tests check what was signed).
pub(crate) fn claims_of(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("a compact JWS");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A query parameter of a URL.
pub(crate) fn query_value(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

/// Writes `tessera.yaml` and `users.yaml` (mode 0600, as `serve` demands) and loads the
/// configuration.
fn write_config(dir: &Path, env: &[(&str, &str)]) -> Config {
    let users = UsersFile {
        users: vec![User {
            username: USER.into(),
            password_hash: password_hash().to_owned(),
            email: Some("dev@example.com".into()),
            groups: vec!["dev".into(), "system:authenticated".into()],
        }],
    };
    let users = yaml_serde::to_string(&users).expect("users render");
    write_private(&dir.join("users.yaml"), &users);
    let secret_hash = crate::secret::sha256_secret_hash(CONFIDENTIAL_SECRET);
    let yaml = format!(
        "issuer: {ISSUER}\n\
         storage:\n  url: sqlite://tessera.db\n\
         audit:\n  output: audit.log\n\
         users:\n  file: users.yaml\n\
         tokens:\n  signing_alg: ES256\n\
         clients:\n\
         \x20 - id: {PUBLIC_CLIENT}\n    public: true\n    redirect_uris: [\"{PUBLIC_REDIRECT}\"]\n\
         \x20 - id: {CONFIDENTIAL_CLIENT}\n    secret_hash: \"{secret_hash}\"\n    \
         redirect_uris: [\"{CONFIDENTIAL_REDIRECT}\"]\n    \
         post_logout_redirect_uris: [\"{POST_LOGOUT_REDIRECT}\"]\n    max_idle: 5m\n"
    );
    let path = dir.join("tessera.yaml");
    write_private(&path, &yaml);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load(&path, &env).expect("the test configuration loads")
}

/// The argon2id hash of [`PASSWORD`], computed once for all tests: hashing is the slow part.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| crate::secret::hash_password(PASSWORD).expect("the test password hashes"))
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{} is written: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{} is made private: {e}", path.display()));
}
