//! The authenticating reverse proxy under `tessera serve`: login through the provider's form,
//! identity headers to an echo upstream (and spoofed ones never), nginx-style `/oauth2/auth`,
//! websockets and streaming through the proxy, and sign-out revoking the session at the
//! provider. What the session's timeouts do (one refresh per session under concurrency, the
//! idle timeout) is proven in-process with the clock advanced (`tests/in_process/proxy.rs`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, ORIGIN, SET_COOKIE};
use serde_json::Value;

use crate::cluster::{Nginx, free_port};
use crate::support::{self, PASSWORD, Server};
use crate::upstream::Upstream;

/// A browser as far as the proxy is concerned: it keeps the proxy's cookies itself (they are
/// `Secure`, and reqwest's jar will not send those over http://127.0.0.1) and the provider's in
/// a jar of its own.
pub struct ProxyBrowser<'a> {
    pub server: &'a Server,
    pub base: String,
    http: reqwest::Client,
    provider: reqwest::Client,
    cookies: Mutex<BTreeMap<String, String>>,
}

impl<'a> ProxyBrowser<'a> {
    pub fn new(server: &'a Server, base: &str) -> ProxyBrowser<'a> {
        ProxyBrowser {
            server,
            base: base.to_owned(),
            http: support::client(&server.ca, false),
            provider: server.new_browser(),
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same browser with new connections (the proxy behind them was restarted).
    pub fn reconnect(&self) -> ProxyBrowser<'a> {
        let fresh = ProxyBrowser::new(self.server, &self.base);
        *fresh.cookies.lock().unwrap() = self.cookies();
        fresh
    }

    /// The proxy's cookies this browser holds.
    pub fn cookies(&self) -> BTreeMap<String, String> {
        self.cookies.lock().unwrap().clone()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies
            .lock()
            .unwrap()
            .insert(name.to_owned(), value.to_owned());
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&self, response: &reqwest::Response) {
        let mut jar = self.cookies.lock().unwrap();
        for value in response.headers().get_all(SET_COOKIE) {
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

    /// A request to the proxy with this browser's cookies; its `Set-Cookie`s are kept.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let cookies = self.cookie_header();
        let request = if cookies.is_empty() {
            request
        } else {
            request.header(COOKIE, cookies)
        };
        let response = request.send().await.unwrap();
        self.absorb(&response);
        response
    }

    /// A page navigation (Accept: text/html), redirects not followed.
    pub async fn navigate(&self, path_or_url: &str) -> reqwest::Response {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        self.send(self.http.get(url).header(ACCEPT, "text/html"))
            .await
    }

    /// A request to the proxy at `path`, to be finished and passed to [`ProxyBrowser::send`].
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Signs out as a person does: `path` (`/oauth2/sign_out?rd=…`) shows a confirmation page
    /// whose form is posted from the proxy's own origin; answers the post's answer.
    pub async fn sign_out(&self, path: &str) -> reqwest::Response {
        let page = self.navigate(path).await;
        assert_eq!(
            page.status(),
            StatusCode::OK,
            "a signed-in sign-out asks first"
        );
        let html = page.text().await.unwrap();
        assert!(
            html.contains("<form method=\"post\" action=\"/oauth2/sign_out\">"),
            "{html}"
        );
        let origin = url::Url::parse(&self.base).unwrap().origin();
        let post = self
            .request(reqwest::Method::POST, "/oauth2/sign_out")
            .header(ORIGIN, origin.ascii_serialization())
            .form(&support::hidden_fields(&html));
        self.send(post).await
    }

    /// Where a sign-out's `location` finally sends the browser: when it is the provider's
    /// logout (RP-Initiated Logout 1.0), through the provider, which must sign out without
    /// asking, and back through the proxy's landing; answers the last `Location`.
    pub async fn follow_sign_out(&self, location: &str) -> String {
        if !location.starts_with(&self.server.issuer) {
            return location.to_owned();
        }
        let logout = self.provider.get(location).send().await.unwrap();
        assert_eq!(
            logout.status(),
            StatusCode::SEE_OTHER,
            "the provider signs out without asking"
        );
        let back = self.navigate(&support::location(&logout)).await;
        assert_eq!(back.status(), StatusCode::FOUND);
        support::location(&back)
    }

    /// An API call (JSON) to the proxy.
    pub async fn fetch(&self, path: &str) -> reqwest::Response {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Navigates to `path`, is sent to the login, signs in as `dev` through the provider's
    /// form, and comes back; answers where the proxy finally sends the browser.
    pub async fn log_in(&self, path: &str) -> String {
        let response = self.navigate(path).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "an anonymous page goes to login"
        );
        let mut authorize = support::location(&response);
        // The proxy itself sends a page to `/oauth2/start`; nginx's `error_page 401` has already
        // started the login through `/oauth2/sign_in`.
        if authorize.starts_with("/oauth2/start?rd=") {
            let response = self.navigate(&authorize).await;
            assert_eq!(response.status(), StatusCode::FOUND);
            authorize = support::location(&response);
        }
        assert!(authorize.starts_with(&self.server.issuer), "{authorize}");
        let callback = self.provider_login(&authorize).await;
        let response = self.navigate(&callback).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the callback succeeds: {}",
            response.text().await.unwrap()
        );
        support::location(&response)
    }

    /// The provider's side of a login: the form, submitted as `dev`; answers the callback URL.
    pub async fn provider_login(&self, authorize: &str) -> String {
        let response = self.provider.get(authorize).send().await.unwrap();
        if response.status().is_redirection() {
            return support::location(&response);
        }
        let status = response.status();
        let html = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "the login form is shown: {html}");
        let mut form = support::hidden_fields(&html);
        form.push(("username".into(), "dev".into()));
        form.push(("password".into(), PASSWORD.into()));
        let response = self
            .provider
            .post(self.server.url("/login"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_redirection(), "{}", response.status());
        support::location(&response)
    }
}

/// The groups of the dev user, as the proxy passes them on.
const DEV_GROUPS: &str = "dev,system:authenticated";

/// A provider with its proxy in front of `upstream`; `extra` adds `TESSERA_*` overrides.
pub async fn start_proxy(upstream: &Upstream, extra: &[(&str, &str)]) -> Server {
    let routes = format!(
        "[{{upstream: '{}', pass_access_token: true}}]",
        upstream.url()
    );
    let mut env = vec![
        ("TESSERA_PROXY__LISTEN", "127.0.0.1:0"),
        ("TESSERA_PROXY__ROUTES", routes.as_str()),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&env).await
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

fn header<'v>(echo: &'v Value, name: &str) -> Option<&'v str> {
    echo["headers"][name][0].as_str()
}

#[tokio::test]
async fn a_login_through_the_proxy_passes_the_user_to_the_upstream_and_never_a_spoofed_one() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server
        .proxy
        .clone()
        .expect("the proxy announces its address");
    let browser = ProxyBrowser::new(&server, &base);

    let api = browser.fetch("/api/pods").await;
    assert_eq!(
        api.status(),
        StatusCode::UNAUTHORIZED,
        "an API call is not redirected"
    );
    assert_eq!(
        upstream.served(),
        0,
        "nothing reaches the upstream anonymously"
    );

    let landed = browser.log_in("/pods?namespace=a").await;
    assert_eq!(
        landed, "/pods?namespace=a",
        "the login returns to the page asked for"
    );
    let session = browser.cookies();
    assert!(session.contains_key("_tessera_proxy"), "{session:?}");
    assert!(
        session["_tessera_proxy"].starts_with("tsp1_"),
        "the cookie holds only an opaque handle"
    );

    let echo = json(
        browser
            .send(
                browser
                    .http
                    .get(format!("{base}/echo?x=1"))
                    .header("X-Forwarded-User", "admin")
                    .header("X-Auth-Request-User", "admin")
                    .header("X-Auth-Request-Groups", "system:masters")
                    .header("Authorization", "Bearer forged")
                    .header("X-Forwarded-For", "203.0.113.9")
                    .header(COOKIE, "theirs=kept"),
            )
            .await,
    )
    .await;
    assert_eq!(echo["path"], "/echo?x=1");
    assert_eq!(header(&echo, "x-auth-request-user"), Some("dev"));
    assert_eq!(
        header(&echo, "x-forwarded-user"),
        None,
        "the client's is dropped"
    );
    assert_eq!(
        header(&echo, "x-auth-request-preferred-username"),
        Some("dev")
    );
    assert_eq!(header(&echo, "x-auth-request-groups"), Some(DEV_GROUPS));
    assert_eq!(
        echo["headers"]["x-auth-request-user"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        header(&echo, "x-forwarded-for"),
        Some("127.0.0.1"),
        "a client's XFF is not believed"
    );
    assert_eq!(header(&echo, "x-forwarded-proto"), Some("http"));
    let bearer = header(&echo, "authorization").unwrap();
    let id_token = bearer.strip_prefix("Bearer ").unwrap();
    let claims = server.verify(id_token, "tessera-proxy").await.unwrap();
    assert_eq!(claims["sub"], "dev");
    let cookies = header(&echo, "cookie").unwrap_or_default();
    assert!(
        !cookies.contains("_tessera_proxy"),
        "the session never reaches the upstream: {cookies}"
    );

    let info = json(browser.fetch("/oauth2/userinfo").await).await;
    assert_eq!(info["user"], "dev");
    assert_eq!(info["groups"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn auth_answers_202_with_the_users_headers_or_401_for_nginx() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    assert_eq!(
        browser.fetch("/oauth2/auth").await.status(),
        StatusCode::UNAUTHORIZED
    );
    browser.set_cookie("_tessera_proxy", "tsp1_forged");
    assert_eq!(
        browser.fetch("/oauth2/auth").await.status(),
        StatusCode::UNAUTHORIZED
    );
    browser.log_in("/").await;
    let auth = browser.fetch("/oauth2/auth").await;
    assert_eq!(auth.status(), StatusCode::ACCEPTED);
    assert_eq!(auth.headers()["x-auth-request-user"], "dev");
    assert_eq!(auth.headers()["x-auth-request-groups"], DEV_GROUPS);
    assert!(
        auth.headers()["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ey")
    );
    let allowed = browser.fetch("/oauth2/auth?allowed_groups=ops,dev").await;
    assert_eq!(allowed.status(), StatusCode::ACCEPTED);
    let denied = browser.fetch("/oauth2/auth?allowed_groups=ops").await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn websockets_and_streamed_answers_pass_through_intact() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    browser.log_in("/").await;

    let started = tokio::time::Instant::now();
    let mut streamed = browser.fetch("/stream").await;
    let first = streamed.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"chunk 0\n");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the first chunk arrives before the upstream has finished"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = streamed.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"chunk 1\nchunk 2\n");

    let ws_url = format!("{}/ws", base.replacen("http", "ws", 1));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .unwrap();
    let cookies: Vec<String> = browser
        .cookies()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    request
        .headers_mut()
        .insert("cookie", cookies.join("; ").parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "again"] {
        socket.send(text.into()).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {text}"));
    }
    socket.close(None).await.unwrap();

    let anonymous = format!("{}/ws", base.replacen("http", "ws", 1));
    let refused = tokio_tungstenite::connect_async(anonymous).await;
    assert!(refused.is_err(), "no websocket without a session");
}

#[tokio::test]
async fn sign_out_revokes_the_session_at_the_provider_and_refuses_open_redirects() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    browser.log_in("/").await;
    let handle = browser.cookies()["_tessera_proxy"].clone();
    let out = browser
        .sign_out("/oauth2/sign_out?rd=https://evil.example/")
        .await;
    assert_eq!(out.status(), StatusCode::FOUND);
    let logout = support::location(&out);
    assert!(
        logout.starts_with(&server.url("/logout?")),
        "on to the provider's end_session_endpoint: {logout}"
    );
    assert!(!logout.contains("evil"), "{logout}");
    assert_eq!(
        browser.follow_sign_out(&logout).await,
        format!("{base}/"),
        "an rd to a foreign host is replaced"
    );
    assert!(
        !browser.cookies().contains_key("_tessera_proxy"),
        "the cookie is cleared"
    );
    let revoked = server.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["reason"], "revocation_endpoint");
    browser.set_cookie("_tessera_proxy", &handle);
    assert_eq!(
        browser.fetch("/echo").await.status(),
        StatusCode::UNAUTHORIZED,
        "the old handle is dead"
    );

    let start = browser.navigate("/oauth2/start?rd=//evil.example/x").await;
    assert_eq!(start.status(), StatusCode::FOUND);
    let state = support::query_param(&support::location(&start), "state").unwrap();
    let login = browser.cookies();
    assert!(
        login.contains_key(&format!("_tessera_proxy_csrf_{}", &state[..16])),
        "{login:?}"
    );
    let forged = browser
        .navigate(&format!(
            "/oauth2/callback?code=x&state={}-forged",
            &state[..16]
        ))
        .await;
    assert_eq!(
        forged.status(),
        StatusCode::FORBIDDEN,
        "a callback with another state is refused"
    );
    let unknown = browser
        .navigate("/oauth2/callback?code=x&state=not-the-one")
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn logins_started_at_once_in_several_tabs_all_come_back() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    let mut authorizations = Vec::new();
    for tab in ["/one", "/two", "/three"] {
        let page = browser.navigate(tab).await;
        let start = browser.navigate(&support::location(&page)).await;
        authorizations.push(support::location(&start));
    }
    let mut landed = Vec::new();
    for authorize in &authorizations {
        let callback = browser.provider_login(authorize).await;
        let back = browser.navigate(&callback).await;
        assert_eq!(
            back.status(),
            StatusCode::FOUND,
            "every tab's login finishes"
        );
        landed.push(support::location(&back));
    }
    assert_eq!(landed, ["/one", "/two", "/three"]);
    let left: Vec<String> = browser
        .cookies()
        .into_keys()
        .filter(|name| name.contains("_csrf_"))
        .collect();
    assert!(
        left.is_empty(),
        "each login's state cookie is cleared: {left:?}"
    );
}

/// nginx in front of an upstream, asking tessera's `/oauth2/auth` about every request, as
/// oauth2-proxy's documentation configures it (only the proxy's address differs).
async fn nginx_auth_request(port: u16, proxy: &str, upstream: &Upstream) -> Nginx {
    let proxy = proxy.trim_start_matches("http://");
    let upstream = upstream.address;
    let http = format!(
        "    server {{
        listen 127.0.0.1:{port};
        location /oauth2/ {{
            proxy_pass http://{proxy};
            proxy_set_header Host $host:$server_port;
            proxy_set_header X-Auth-Request-Redirect $request_uri;
        }}
        location = /oauth2/auth {{
            proxy_pass http://{proxy};
            proxy_set_header Host $host:$server_port;
            proxy_set_header Content-Length \"\";
            proxy_pass_request_body off;
        }}
        location / {{
            auth_request /oauth2/auth;
            error_page 401 = /oauth2/sign_in;
            auth_request_set $user $upstream_http_x_auth_request_user;
            auth_request_set $email $upstream_http_x_auth_request_email;
            auth_request_set $groups $upstream_http_x_auth_request_groups;
            auth_request_set $token $upstream_http_authorization;
            proxy_set_header X-User $user;
            proxy_set_header X-Email $email;
            proxy_set_header X-Auth-Request-User $user;
            proxy_set_header X-Auth-Request-Groups $groups;
            proxy_set_header X-Forwarded-User $user;
            proxy_set_header Authorization $token;
            proxy_pass http://{upstream};
        }}
    }}
"
    );
    Nginx::start_http(port, &http, &format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn nginx_auth_request_admits_only_signed_in_users_and_never_spoofed_headers() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/oauth2/callback");
    let server = start_proxy(&upstream, &[("TESSERA_PROXY__REDIRECT_URL", &callback)]).await;
    let nginx = nginx_auth_request(port, server.proxy.as_deref().unwrap(), &upstream).await;
    let browser = ProxyBrowser::new(&server, &nginx.url);

    let anonymous = browser.fetch("/app").await;
    assert_eq!(
        anonymous.status(),
        StatusCode::FOUND,
        "nginx sends the anonymous to sign in"
    );
    assert_eq!(upstream.served(), 0);

    let landed = browser.log_in("/app?tab=2").await;
    assert_eq!(landed, "/app?tab=2");
    let echo = json(
        browser
            .send(
                browser
                    .http
                    .get(format!("{}/app", nginx.url))
                    .header("X-Auth-Request-User", "admin")
                    .header("X-Forwarded-User", "admin")
                    .header("X-User", "admin")
                    .header("Authorization", "Bearer forged"),
            )
            .await,
    )
    .await;
    assert_eq!(header(&echo, "x-user"), Some("dev"));
    assert_eq!(header(&echo, "x-auth-request-user"), Some("dev"));
    assert_eq!(header(&echo, "x-forwarded-user"), Some("dev"));
    assert_eq!(header(&echo, "x-auth-request-groups"), Some(DEV_GROUPS));
    let token = header(&echo, "authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(
        server.verify(token, "tessera-proxy").await.unwrap()["sub"],
        "dev"
    );
    for name in [
        "x-user",
        "x-auth-request-user",
        "x-forwarded-user",
        "authorization",
    ] {
        assert_eq!(echo["headers"][name].as_array().unwrap().len(), 1, "{name}");
    }

    let out = browser.sign_out("/oauth2/sign_out").await;
    assert_eq!(out.status(), StatusCode::FOUND);
    assert_eq!(
        browser.fetch("/app").await.status(),
        StatusCode::FOUND,
        "signed out"
    );
}

#[tokio::test]
async fn http2_clients_are_proxied_to_an_http1_upstream() {
    let upstream = Upstream::start().await;
    let server = start_proxy(&upstream, &[]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    browser.log_in("/").await;
    let h2c = support::client_builder(&server.ca)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let cookie = format!("_tessera_proxy={}", browser.cookies()["_tessera_proxy"]);
    let response = h2c
        .get(format!("{base}/echo"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(
        header(&echo, "host"),
        Some(base.trim_start_matches("http://"))
    );
    assert_eq!(header(&echo, "x-auth-request-user"), Some("dev"));
}

#[tokio::test]
async fn a_route_may_speak_http2_to_its_upstream() {
    let upstream = Upstream::start().await;
    let routes = format!("[{{upstream: '{}', upstream_http2: true}}]", upstream.url());
    let server = start_proxy(&upstream, &[("TESSERA_PROXY__ROUTES", &routes)]).await;
    let base = server.proxy.clone().unwrap();
    let browser = ProxyBrowser::new(&server, &base);
    browser.log_in("/").await;
    let echo = json(browser.fetch("/echo?h2").await).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["path"], "/echo?h2");
    assert_eq!(header(&echo, "x-auth-request-user"), Some("dev"));
    assert_eq!(
        header(&echo, "authorization"),
        None,
        "no pass_access_token on this route"
    );
}
