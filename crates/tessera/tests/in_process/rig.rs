//! The rig: a provider and its proxy in this process, sharing one `ManualClock`, an echo
//! upstream on a loopback port, and a browser that carries the cookies of both by hand.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request as IncomingRequest;
use axum::http::header::{ACCEPT, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use tessera::app::{App, AppParts};
use tessera::audit::Audit;
use tessera::config::Config;
use tessera::connector::Connectors;
use tessera::proxy::provider::Provider;
use tessera::proxy::{Proxy, ProxyParts};
use tessera::users::Users;
use tessera_core::clock::{Clock, ManualClock, SystemClock};
use tower::ServiceExt as _;

/// The proxy's address as the tests' requests name it (`Host`); its callback is registered on
/// it, as `tessera serve` registers the bound address.
pub const PROXY_HOST: &str = "127.0.0.1:4180";
/// The local provider's issuer: requests to it are answered by its router, in-process.
const LOCAL_ISSUER: &str = "https://provider.test";
/// The dev user's password.
pub const PASSWORD: &str = "correct horse battery staple";
/// The groups of the dev user, as the proxy passes them on.
pub const DEV_GROUPS: &str = "dev,system:authenticated";

/// What a rig is built with.
pub struct Setup {
    /// `proxy.session`, as a YAML flow mapping.
    pub session: String,
    /// Groups of the dev user besides [`DEV_GROUPS`].
    pub extra_groups: usize,
    /// The provider: this process's own, or the rig's provider reached over loopback HTTP as
    /// an external one, as client `rp`.
    pub external: bool,
}

impl Setup {
    /// The local provider, sessions as `session` says.
    pub fn local(session: &str) -> Setup {
        Setup {
            session: session.to_owned(),
            extra_groups: 0,
            external: false,
        }
    }
}

/// The cookie store's sealing key (`proxy.cookie.secret`).
pub const COOKIE_KEY: [u8; 32] = [42; 32];
/// The key it replaced (`previous_secrets`): cookies sealed under it still open.
pub const PREVIOUS_COOKIE_KEY: [u8; 32] = [7; 32];

/// The secret of client `rp`.
pub const RP_SECRET: &str = "rp secret for the in-process test";

/// A provider, its proxy, an upstream, and the clock they all read.
pub struct Rig {
    clock: Arc<ManualClock>,
    provider: Router,
    issuer: String,
    proxy: Router,
    audit: Audit,
    audit_file: std::path::PathBuf,
    upstream: tokio::task::JoinHandle<()>,
    provider_server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.upstream.abort();
        if let Some(server) = &self.provider_server {
            server.abort();
        }
    }
}

impl Rig {
    /// Builds everything as `tessera serve` does with a `proxy:` section.
    pub async fn start(setup: Setup) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (upstream_url, upstream) = echo_upstream().await;
        let provider_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = if setup.external {
            format!("http://{}", provider_listener.local_addr().unwrap())
        } else {
            LOCAL_ISSUER.to_owned()
        };
        write_users(dir.path(), setup.extra_groups);
        let config_path = dir.path().join("tessera.yaml");
        write_private(&config_path, &config_yaml(&setup, &upstream_url, &issuer));
        let mut config = Config::load(&config_path, &[]).unwrap();
        let proxy_config = config.proxy.clone().unwrap();
        if !setup.external {
            let bound = PROXY_HOST.parse().unwrap();
            tessera::proxy::register_local_client(&mut config.clients, &proxy_config, bound)
                .unwrap();
        }
        let store = tessera::storage::open(&config.storage).await.unwrap();
        let audit_file = config.audit_file.clone().unwrap();
        let audit = Audit::start(Some(&audit_file)).unwrap();
        let clock = Arc::new(ManualClock::at(SystemClock.now()));
        let users = Users::load(&config.users_file.clone().unwrap()).unwrap();
        let connectors = Connectors::new(&config.connectors, config.group_mapping.clone()).unwrap();
        let app = Arc::new(
            App::new(AppParts {
                config,
                issuer: issuer.clone(),
                store: Arc::clone(&store),
                clock: clock.clone(),
                audit: audit.clone(),
                users,
                connectors,
            })
            .await
            .unwrap(),
        );
        let provider = tessera::http::router(Arc::clone(&app));
        let provider_server = setup.external.then(|| {
            let router = provider.clone();
            tokio::spawn(async move {
                axum::serve(provider_listener, router).await.unwrap();
            })
        });
        let proxy = Proxy::new(ProxyParts {
            provider: match proxy_config.provider.clone() {
                Some(external) => Provider::remote(external).unwrap(),
                None => Provider::Local { app },
            },
            config: proxy_config,
            store: Some(store),
            clock: clock.clone(),
            trusted_proxies: Vec::new(),
        })
        .await
        .unwrap();
        Rig {
            clock,
            provider,
            issuer,
            proxy: tessera::proxy::router(Arc::new(proxy)),
            audit,
            audit_file,
            upstream,
            provider_server,
            _dir: dir,
        }
    }

    /// Moves the provider's and the proxy's time forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The rig's time in whole seconds, as JWT `exp` counts it.
    pub fn clock_secs(&self) -> i64 {
        self.clock.now().as_secs()
    }

    /// A browser with no cookies yet.
    pub fn browser(&self) -> Browser<'_> {
        Browser {
            rig: self,
            proxy_cookies: Mutex::new(BTreeMap::new()),
            provider_cookies: Mutex::new(BTreeMap::new()),
            proxy_set_cookies: Mutex::new(Vec::new()),
        }
    }

    /// The audit events of `kind` recorded so far.
    pub fn audit_events(&self, kind: &str) -> Vec<Value> {
        self.audit.flush();
        std::fs::read_to_string(&self.audit_file)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|event| event["event"] == kind)
            .collect()
    }

    /// The audit events of `kind` once there are at least `count`, for what the proxy does
    /// after it has answered (revoking a timed-out session at the provider): polled, not
    /// waited for a fixed time.
    pub async fn audit_events_once(&self, kind: &str, count: usize) -> Vec<Value> {
        for _ in 0..500 {
            let events = self.audit_events(kind);
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.audit_events(kind)
    }
}

/// An answer, its body read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    async fn read(response: axum::response::Response) -> Answer {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The `Location` of a redirect.
    pub fn location(&self) -> String {
        let location = self.headers.get(LOCATION);
        let location = location.unwrap_or_else(|| panic!("no Location in {self:?}"));
        location.to_str().unwrap().to_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `Set-Cookie` values of the answer.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value of header `name` the echo upstream received.
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_owned)
    }
}

/// A browser as far as the proxy and the provider are concerned: it keeps each one's cookies
/// itself and sends them by hand.
pub struct Browser<'r> {
    rig: &'r Rig,
    proxy_cookies: Mutex<BTreeMap<String, String>>,
    provider_cookies: Mutex<BTreeMap<String, String>>,
    /// Every `Set-Cookie` of the proxy, attributes and all, in the order received.
    proxy_set_cookies: Mutex<Vec<String>>,
}

impl Browser<'_> {
    /// The proxy's cookies this browser holds.
    pub fn cookies(&self) -> BTreeMap<String, String> {
        self.proxy_cookies.lock().unwrap().clone()
    }

    /// The provider's cookies this browser holds.
    pub fn provider_cookies(&self) -> BTreeMap<String, String> {
        self.provider_cookies.lock().unwrap().clone()
    }

    /// Replaces the provider's cookies this browser holds.
    pub fn set_provider_cookies(&self, cookies: BTreeMap<String, String>) {
        *self.provider_cookies.lock().unwrap() = cookies;
    }

    /// Replaces the proxy's cookies this browser holds.
    pub fn set_cookies(&self, cookies: BTreeMap<String, String>) {
        *self.proxy_cookies.lock().unwrap() = cookies;
    }

    /// A request to the proxy carrying this browser's cookies, to be sent with
    /// [`Browser::send`] or from a task of its own.
    pub fn request(&self, method: Method, path: &str, html: bool) -> Request<Body> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, PROXY_HOST);
        if html {
            request = request.header(ACCEPT, "text/html");
        }
        if let Some(cookies) = cookie_header(&self.proxy_cookies) {
            request = request.header(COOKIE, cookies);
        }
        request.body(Body::empty()).unwrap()
    }

    /// Sends `request` to the proxy and keeps the cookies it sets.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.rig.proxy.clone().oneshot(request).await.unwrap();
        self.absorb(Answer::read(response).await)
    }

    /// Keeps the cookies an answer of the proxy sets (from a request sent elsewhere).
    pub fn absorb(&self, answer: Answer) -> Answer {
        absorb(&self.proxy_cookies, &answer.headers);
        self.proxy_set_cookies
            .lock()
            .unwrap()
            .extend(answer.set_cookies());
        answer
    }

    /// Every `Set-Cookie` the proxy sent this browser, attributes and all.
    pub fn set_cookie_history(&self) -> Vec<String> {
        self.proxy_set_cookies.lock().unwrap().clone()
    }

    /// Sends `requests` to the proxy all at once, each from a task of its own (so on as many
    /// threads as the runtime has), and keeps the cookies they set, in order.
    pub async fn send_at_once(&self, requests: Vec<Request<Body>>) -> Vec<Answer> {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let proxy = self.rig.proxy.clone();
                tokio::spawn(
                    async move { Answer::read(proxy.oneshot(request).await.unwrap()).await },
                )
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(self.absorb(task.await.unwrap()));
        }
        answers
    }

    /// A page navigation (Accept: text/html).
    pub async fn navigate(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path, true)).await
    }

    /// An API call.
    pub async fn fetch(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path, false)).await
    }

    /// Navigates to `path`, is sent to the login, signs in as `dev` through the provider's
    /// form (or its single sign-on), and comes back; answers where the proxy finally sends the
    /// browser.
    pub async fn log_in(&self, path: &str) -> String {
        let page = self.navigate(path).await;
        assert_eq!(
            page.status,
            StatusCode::FOUND,
            "an anonymous page goes to login"
        );
        let start = self.navigate(&page.location()).await;
        assert_eq!(start.status, StatusCode::FOUND, "{}", start.text());
        let callback = self.provider_login(&start.location()).await;
        self.finish_login(&callback).await
    }

    /// The proxy's callback, with the code the provider sent the browser back with.
    pub async fn finish_login(&self, callback: &str) -> String {
        let path = callback
            .strip_prefix(&format!("http://{PROXY_HOST}"))
            .unwrap_or_else(|| panic!("the callback is the proxy's: {callback}"));
        let back = self.navigate(path).await;
        assert_eq!(
            back.status,
            StatusCode::FOUND,
            "the callback succeeds: {}",
            back.text()
        );
        back.location()
    }

    /// The provider's side of a login: its single sign-on when the browser has a session
    /// there, else the form, submitted as `dev`; answers the callback URL.
    pub async fn provider_login(&self, authorize: &str) -> String {
        let form = self.provider_send(Method::GET, authorize, None).await;
        if form.status.is_redirection() {
            return form.location();
        }
        self.submit_login_form(&form).await
    }

    /// The callback URL when the provider signs this browser in without asking (it has a
    /// session there), else `None`.
    pub async fn provider_single_sign_on(&self, authorize: &str) -> Option<String> {
        let answer = self.provider_send(Method::GET, authorize, None).await;
        answer.status.is_redirection().then(|| answer.location())
    }

    /// Submits the provider's login form as `dev`; answers the callback URL.
    async fn submit_login_form(&self, form: &Answer) -> String {
        assert_eq!(
            form.status,
            StatusCode::OK,
            "the login form is shown: {}",
            form.text()
        );
        let mut fields = hidden_fields(&form.text());
        fields.push(("username".into(), "dev".into()));
        fields.push(("password".into(), PASSWORD.into()));
        let body = serde_urlencoded::to_string(&fields).unwrap();
        let login = format!("{}/login", self.rig.issuer);
        let signed_in = self.provider_send(Method::POST, &login, Some(body)).await;
        assert!(signed_in.status.is_redirection(), "{}", signed_in.text());
        signed_in.location()
    }

    /// Signs out as a person does: `path` shows a confirmation page whose form is posted from
    /// the proxy's own origin; answers the post's answer.
    pub async fn sign_out(&self, path: &str) -> Answer {
        let page = self.navigate(path).await;
        assert_eq!(
            page.status,
            StatusCode::OK,
            "a signed-in sign-out asks first"
        );
        let html = page.text();
        assert!(
            html.contains("<form method=\"post\" action=\"/oauth2/sign_out\">"),
            "{html}"
        );
        let body = serde_urlencoded::to_string(hidden_fields(&html)).unwrap();
        let mut post = self.request(Method::POST, "/oauth2/sign_out", false);
        let headers = post.headers_mut();
        headers.insert(ORIGIN, format!("http://{PROXY_HOST}").parse().unwrap());
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        *post.body_mut() = Body::from(body);
        self.send(post).await
    }

    /// Where a sign-out's answer finally sends the browser: when the proxy hands it to the
    /// provider's `end_session_endpoint` (RP-Initiated Logout 1.0), through the provider (which
    /// must sign out without asking) and back to the proxy's landing; answers the last
    /// `Location`.
    pub async fn follow_sign_out(&self, out: &Answer) -> String {
        assert_eq!(out.status, StatusCode::FOUND, "{}", out.text());
        let location = out.location();
        if !location.starts_with(&self.rig.issuer) {
            return location;
        }
        let logout = self.provider_send(Method::GET, &location, None).await;
        assert_eq!(
            logout.status,
            StatusCode::SEE_OTHER,
            "the provider signs out without asking: {}",
            logout.text()
        );
        let landing = logout.location();
        let path = landing
            .strip_prefix(&format!("http://{PROXY_HOST}"))
            .unwrap_or_else(|| {
                panic!("the provider sends the browser back to the proxy: {landing}")
            });
        let back = self.navigate(path).await;
        assert_eq!(back.status, StatusCode::FOUND, "{}", back.text());
        back.location()
    }

    /// Whether the provider's single sign-on would still answer a login of this browser
    /// without asking: `authorize` with its `prompt` and `max_age` left out.
    pub async fn provider_still_signed_in(&self, authorize: &str) -> bool {
        let mut url = url::Url::parse(authorize).unwrap();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| name != "prompt" && name != "max_age")
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(kept);
        self.provider_single_sign_on(url.as_str()).await.is_some()
    }

    /// A request to the provider (by its issuer URL) with the provider's cookies.
    async fn provider_send(&self, method: Method, url: &str, form: Option<String>) -> Answer {
        let path = url
            .strip_prefix(&self.rig.issuer)
            .unwrap_or_else(|| panic!("{url} is the provider's"));
        let mut request = Request::builder().method(method).uri(path);
        if let Some(cookies) = cookie_header(&self.provider_cookies) {
            request = request.header(COOKIE, cookies);
        }
        let body = match form {
            Some(form) => {
                request = request.header("content-type", "application/x-www-form-urlencoded");
                Body::from(form)
            }
            None => Body::empty(),
        };
        let response = self
            .rig
            .provider
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let answer = Answer::read(response).await;
        absorb(&self.provider_cookies, &answer.headers);
        answer
    }
}

/// The `Cookie` header of a jar, if it holds any.
fn cookie_header(jar: &Mutex<BTreeMap<String, String>>) -> Option<String> {
    let jar = jar.lock().unwrap();
    (!jar.is_empty()).then(|| {
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Keeps the cookies `headers` set in `jar`, and drops those it clears.
fn absorb(jar: &Mutex<BTreeMap<String, String>>, headers: &HeaderMap) {
    let mut jar = jar.lock().unwrap();
    for value in headers.get_all(SET_COOKIE) {
        let text = value.to_str().unwrap();
        let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
        let (name, value) = pair.split_once('=').unwrap();
        if attributes.contains("Max-Age=0") {
            jar.remove(name);
        } else {
            jar.insert(name.to_owned(), value.to_owned());
        }
    }
}

/// The hidden inputs of a form, in order.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|part| {
            let name = part.split("name=\"").nth(1)?.split('"').next()?;
            let value = part.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// The claims of a JWT, unverified.
pub fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `tessera.yaml` for `setup`: SQLite and the audit log in the rig's directory, one route to
/// the upstream that passes the id_token on, and a cookie secret when the cookie store needs
/// one.
fn config_yaml(setup: &Setup, upstream: &str, issuer: &str) -> String {
    let mut yaml = format!(
        "storage: {{url: 'sqlite://tessera.db'}}
audit: {{output: audit.log}}
users: {{file: users.yaml}}
proxy:
  listen: 127.0.0.1:0
  routes: [{{upstream: '{upstream}', pass_access_token: true}}]
  session: {session}
",
        session = setup.session,
    );
    if setup.session.contains("store: cookie") {
        // Required for the cookie store (`server` keeps its key in the database).
        let b64 = |key| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        yaml.push_str(&format!(
            "  cookie: {{secret: '{}', previous_secrets: ['{}']}}\n",
            b64(COOKIE_KEY),
            b64(PREVIOUS_COOKIE_KEY)
        ));
    }
    if setup.external {
        let hash = tessera::secret::sha256_secret_hash(RP_SECRET);
        yaml.push_str(&format!(
            "  provider: {{issuer: '{issuer}', client_id: rp, client_secret: '{RP_SECRET}'}}
clients:
  - {{id: rp, secret_hash: '{hash}', redirect_uris: ['http://{PROXY_HOST}/oauth2/callback']}}
"
        ));
    }
    yaml
}

/// `users.yaml`: `dev` in [`DEV_GROUPS`] and `extra_groups` more.
fn write_users(dir: &Path, extra_groups: usize) {
    let mut groups: Vec<String> = DEV_GROUPS.split(',').map(str::to_owned).collect();
    groups.extend((0..extra_groups).map(|i| format!("team-{i:04}-readers")));
    let users = json!({"users": [{
        "username": "dev",
        "password_hash": tessera::secret::hash_password(PASSWORD).unwrap(),
        "email": "dev@example.com",
        "groups": groups,
    }]});
    write_private(&dir.join("users.yaml"), &users.to_string());
}

fn write_private(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// An upstream on a free loopback port that answers every request with the request itself
/// (method, path, headers) as JSON.
async fn echo_upstream() -> (String, tokio::task::JoinHandle<()>) {
    async fn echo(request: IncomingRequest) -> axum::Json<Value> {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in request.headers() {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        axum::Json(json!({
            "method": request.method().as_str(),
            "path": request.uri().path_and_query().map(|p| p.as_str()),
            "headers": headers,
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(echo);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}
