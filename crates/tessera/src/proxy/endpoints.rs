//! The proxy's HTTP handlers: oauth2-proxy's `/oauth2/start`, `/oauth2/callback`,
//! `/oauth2/auth`, `/oauth2/sign_out`, `/oauth2/userinfo`, and forwarding of everything else.
//! Each parses, asks [`Sessions`](super::session::Sessions) and the provider, and renders.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_core::clock::UnixMillis;
use tessera_core::token::constant_time_eq;

use super::Proxy;
use super::forward::Origin;
use super::provider::{Identity, ProviderError};
use super::session::{Current, Lookup, SessionError, SessionState};
use crate::app::RequestContext;
use crate::http::OAuthError;

/// Path of the callback, on every host the proxy serves.
pub(super) const CALLBACK_PATH: &str = "/oauth2/callback";
/// How long a login may take between `/oauth2/start` and the callback.
const LOGIN_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Headers a client could use to pretend to be someone: never passed on from the client.
const IDENTITY_HEADERS: [&str; 6] = [
    "authorization",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];

/// What the login-state cookie carries from `/oauth2/start` to the callback.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
    rd: String,
    expires_at: UnixMillis,
}

/// `?rd=`.
#[derive(Deserialize)]
pub(super) struct RdQuery {
    rd: Option<String>,
}

/// `GET /oauth2/start?rd=URL` (and `/oauth2/sign_in`, where nginx's `error_page 401` sends
/// the browser, with the page in `X-Auth-Request-Redirect` as oauth2-proxy reads it): begins a
/// login at the provider.
pub(super) async fn start(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<RdQuery>,
    headers: HeaderMap,
) -> Response {
    let origin = &caller.origin;
    let asked = query.rd.as_deref().or_else(|| {
        headers
            .get("x-auth-request-redirect")
            .and_then(|v| v.to_str().ok())
    });
    let rd = asked
        .and_then(|rd| proxy.redirects.check(rd, &origin.host))
        .unwrap_or("/")
        .to_owned();
    begin_login(&proxy, origin, rd).await
}

/// `GET /oauth2/callback?code=…&state=…`: finishes a login and starts the session.
pub(super) async fn callback(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let jar = &proxy.sessions.jar;
    let csrf = jar.csrf_name();
    let login = super::cookie::value(&headers, &csrf)
        .and_then(|sealed| proxy.sessions.open_for(&csrf, &sealed))
        .and_then(|plain| serde_json::from_slice::<LoginState>(&plain).ok())
        .filter(|login| proxy.sessions.now() < login.expires_at);
    let Some(login) = login else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the login state is missing or expired (cookies off, or a login older than 10 minutes); open the page again",
        );
    };
    let sent_state = query.state.as_deref().unwrap_or_default();
    if !constant_time_eq(sent_state.as_bytes(), login.state.as_bytes()) {
        return error(
            StatusCode::FORBIDDEN,
            "invalid_request",
            "the state does not match this browser's login; open the page again",
        );
    }
    if let Some(e) = &query.error {
        let description = format!("the provider refused the login: {e}");
        return error(StatusCode::FORBIDDEN, "access_denied", description);
    }
    let Some(code) = query.code.as_deref() else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "no code");
    };
    let ctx = caller.ctx;
    let grant = match proxy
        .provider
        .exchange(
            code,
            &login.redirect_uri,
            &login.verifier,
            &login.nonce,
            &ctx,
        )
        .await
    {
        Ok(grant) => grant,
        Err(e) => return provider_error(&e),
    };
    let mut cookies = match proxy.sessions.create(grant, &headers).await {
        Ok(cookies) => cookies,
        Err(e) => return session_error(e),
    };
    cookies.push(jar.clear(&csrf));
    with_cookies(redirect(&login.rd), cookies)
}

/// The callback's query.
#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `?allowed_groups=a,b` of `/oauth2/auth`.
#[derive(Deserialize)]
pub(super) struct AuthQuery {
    allowed_groups: Option<String>,
}

/// `GET /oauth2/auth`: nginx `auth_request`. 202 with the user's headers, 401 without a
/// session, 403 outside `allowed_groups`.
pub(super) async fn auth(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<AuthQuery>,
    headers: HeaderMap,
) -> Response {
    let current = match proxy.session(&caller.ctx, &headers).await {
        Ok(current) => current,
        Err(answer) => return answer.unauthenticated(),
    };
    let groups: Vec<String> = query
        .allowed_groups
        .iter()
        .flat_map(|g| g.split(','))
        .map(|g| g.trim().to_owned())
        .filter(|g| !g.is_empty())
        .collect();
    if !in_groups(&current.state.grant.identity, &groups) {
        return with_cookies(forbidden(), current.set_cookies);
    }
    let mut response = StatusCode::ACCEPTED.into_response();
    let headers = response.headers_mut();
    headers.extend(identity_headers(&current.state, true));
    with_cookies(response, current.set_cookies)
}

/// `GET|POST /oauth2/sign_out?rd=URL`: ends the session here and at the provider.
pub(super) async fn sign_out(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<RdQuery>,
    headers: HeaderMap,
) -> Response {
    let origin = &caller.origin;
    let target = query
        .rd
        .as_deref()
        .and_then(|rd| proxy.redirects.check(rd, &origin.host))
        .unwrap_or("/")
        .to_owned();
    let ctx = caller.ctx;
    let cookies = match proxy.sessions.lookup(&headers).await {
        Ok(Lookup::Live(current)) => match proxy.end(&current.state, &headers, &ctx).await {
            Ok(cookies) => cookies,
            Err(e) => return session_error(e),
        },
        Ok(Lookup::TimedOut { state, set_cookies }) => {
            proxy.revoke_later(state, ctx);
            set_cookies
        }
        Ok(Lookup::Missing) => proxy.sessions.clear_all(&headers),
        Err(e) => return session_error(e),
    };
    with_cookies(redirect(&target), cookies)
}

/// `GET /oauth2/userinfo`: the user as JSON, as oauth2-proxy answers it.
pub(super) async fn userinfo(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    headers: HeaderMap,
) -> Response {
    let current = match proxy.session(&caller.ctx, &headers).await {
        Ok(current) => current,
        Err(answer) => return answer.unauthenticated(),
    };
    let identity = &current.state.grant.identity;
    let body = json!({
        "user": identity.sub,
        "email": identity.email,
        "groups": identity.groups,
        "preferredUsername": identity.preferred_username,
    });
    with_cookies(axum::Json(body).into_response(), current.set_cookies)
}

/// Everything else: a route's request, forwarded with the user's identity when signed in.
pub(super) async fn proxied(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    mut request: Request,
) -> Response {
    let origin = &caller.origin;
    let Some(route) = proxy.route(&origin.host, request.uri().path()).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route for this host and path",
        );
    };
    let current = match proxy.session(&caller.ctx, request.headers()).await {
        Ok(current) => current,
        Err(answer) => return answer.login_or_unauthenticated(&request),
    };
    if !in_groups(&current.state.grant.identity, &route.allowed_groups) {
        return with_cookies(forbidden(), current.set_cookies);
    }
    let cookie = proxy.sessions.jar.strip_ours(request.headers());
    strip_identity(request.headers_mut());
    let extra = identity_headers(&current.state, route.pass_access_token);
    let response = proxy
        .upstreams
        .forward(&route, request, origin, extra, cookie)
        .await;
    with_cookies(response, current.set_cookies)
}

/// Why a request has no usable session, and the cookies to set when answering it.
struct NoSession {
    set_cookies: Vec<HeaderValue>,
    failure: Option<Response>,
}

impl NoSession {
    /// 401 (or the failure that is not the user's fault, such as a database outage).
    fn unauthenticated(self) -> Response {
        let response = self
            .failure
            .unwrap_or_else(|| error(StatusCode::UNAUTHORIZED, "unauthorized", "sign in first"));
        with_cookies(response, self.set_cookies)
    }

    /// For a page a browser navigates to: the login; for anything else: 401.
    fn login_or_unauthenticated(self, request: &Request) -> Response {
        let navigates = matches!(*request.method(), Method::GET | Method::HEAD)
            && request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("text/html"));
        if !navigates || self.failure.is_some() {
            return self.unauthenticated();
        }
        let rd = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        with_cookies(
            redirect(&format!("/oauth2/start?rd={rd}")),
            self.set_cookies,
        )
    }
}

impl Proxy {
    /// The request's live, fresh session, or why there is none.
    async fn session(
        self: &Arc<Self>,
        ctx: &RequestContext,
        headers: &HeaderMap,
    ) -> Result<Current, NoSession> {
        let current = match self.sessions.lookup(headers).await {
            Ok(Lookup::Live(current)) => current,
            Ok(Lookup::Missing) => {
                return Err(NoSession {
                    set_cookies: Vec::new(),
                    failure: None,
                });
            }
            Ok(Lookup::TimedOut { state, set_cookies }) => {
                self.revoke_later(state, ctx.clone());
                return Err(NoSession {
                    set_cookies,
                    failure: None,
                });
            }
            Err(e) => {
                return Err(NoSession {
                    set_cookies: Vec::new(),
                    failure: Some(session_error(e)),
                });
            }
        };
        match self
            .sessions
            .fresh(current, &self.provider, headers, ctx)
            .await
        {
            Ok(current) => Ok(current),
            Err(SessionError::Ended { set_cookies }) => Err(NoSession {
                set_cookies,
                failure: None,
            }),
            Err(e) => Err(NoSession {
                set_cookies: Vec::new(),
                failure: Some(session_error(e)),
            }),
        }
    }

    /// Signs out: forgets the session and revokes its refresh token at the provider.
    async fn end(
        &self,
        state: &SessionState,
        headers: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let cookies = self.sessions.forget(state, headers).await?;
        if let Some(token) = &state.grant.refresh_token
            && let Err(e) = self.provider.revoke(token, ctx).await
        {
            tracing::warn!(error = %e, "sign-out could not revoke the session at the provider");
        }
        Ok(cookies)
    }

    /// Revokes a timed-out session's refresh token at the provider, without holding up the
    /// answer.
    fn revoke_later(self: &Arc<Self>, state: SessionState, ctx: RequestContext) {
        let Some(token) = state.grant.refresh_token else {
            return;
        };
        let proxy = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = proxy.provider.revoke(&token, &ctx).await {
                tracing::warn!(error = %e, "cannot revoke a timed-out session at the provider");
            }
        });
    }

    /// The callback URL for a request: the configured one, or this request's own host.
    fn callback_url(&self, origin: &Origin) -> String {
        match &self.config.redirect_url {
            Some(url) => url.to_string(),
            None => format!("{}://{}{CALLBACK_PATH}", origin.proto, origin.host),
        }
    }
}

/// Who is asking and how they reached the proxy: forwarded headers are believed only from
/// `http.trusted_proxies`.
pub(super) struct Caller {
    origin: Origin,
    ctx: RequestContext,
}

impl FromRequestParts<Arc<Proxy>> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        proxy: &Arc<Proxy>,
    ) -> Result<Caller, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let headers = &parts.headers;
        let trusted = proxy.trusted_proxies.iter().any(|n| n.contains(&peer));
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // HTTP/2 carries the host in the URI (`:authority`), HTTP/1.1 in `Host`.
        let host = first("x-forwarded-host")
            .filter(|_| trusted)
            .or_else(|| first("host"))
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let proto = first("x-forwarded-proto")
            .filter(|_| trusted)
            .unwrap_or_else(|| "http".to_owned());
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(chain) if trusted => format!("{chain}, {peer}"),
            _ => peer.to_string(),
        };
        let ip = crate::http::client_ip(peer, headers, &proxy.trusted_proxies);
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(Caller {
            origin: Origin {
                forwarded_for,
                proto,
                host,
            },
            ctx: RequestContext {
                ip: ip.to_string(),
                user_agent,
            },
        })
    }
}

async fn begin_login(proxy: &Proxy, origin: &Origin, rd: String) -> Response {
    let verifier = random_text();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let login = LoginState {
        state: random_text(),
        nonce: random_text(),
        verifier,
        redirect_uri: proxy.callback_url(origin),
        rd,
        expires_at: proxy.sessions.now().plus(LOGIN_TTL),
    };
    let url = match proxy
        .provider
        .authorization_url(&login.redirect_uri, &login.state, &login.nonce, &challenge)
        .await
    {
        Ok(url) => url,
        Err(e) => return provider_error(&e),
    };
    let jar = &proxy.sessions.jar;
    let csrf = jar.csrf_name();
    let Some(sealed) = serde_json::to_vec(&login)
        .ok()
        .and_then(|plain| proxy.sessions.seal_for(&csrf, &plain).ok())
    else {
        return session_error(SessionError::Sealing);
    };
    let max_age = i64::try_from(LOGIN_TTL.as_secs()).unwrap_or(600);
    with_cookies(redirect(&url), vec![jar.set(&csrf, &sealed, max_age)])
}

/// The headers that tell the upstream (or nginx) who the user is: oauth2-proxy's
/// `X-Auth-Request-*`, and with `bearer` the id_token as `Authorization`.
fn identity_headers(state: &SessionState, bearer: bool) -> HeaderMap {
    let identity = &state.grant.identity;
    let groups = identity.groups.join(",");
    let values = [
        ("x-auth-request-user", Some(identity.sub.as_str())),
        ("x-auth-request-email", identity.email.as_deref()),
        (
            "x-auth-request-groups",
            Some(groups.as_str()).filter(|g| !g.is_empty()),
        ),
        (
            "x-auth-request-preferred-username",
            identity.preferred_username.as_deref(),
        ),
    ];
    let mut headers = HeaderMap::with_capacity(values.len() + 1);
    for (name, value) in values {
        // Claims are UTF-8; a value with control characters is left out rather than mangled.
        if let Some(Ok(value)) = value.map(|v| HeaderValue::from_bytes(v.as_bytes())) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if bearer && let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", state.grant.id_token))
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

/// Removes every header by which a client could claim an identity.
fn strip_identity(headers: &mut HeaderMap) {
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-auth-request-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Whether the user is in one of `allowed` (an empty list allows everyone signed in).
fn in_groups(identity: &Identity, allowed: &[String]) -> bool {
    allowed.is_empty() || identity.groups.iter().any(|g| allowed.contains(g))
}

fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad redirect target",
        ),
    }
}

fn with_cookies(mut response: Response, cookies: Vec<HeaderValue>) -> Response {
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn forbidden() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "you are not in a group allowed here",
    )
}

fn error(status: StatusCode, code: &'static str, description: impl Into<String>) -> Response {
    OAuthError::new(status, code, description).into_response()
}

fn provider_error(e: &ProviderError) -> Response {
    match e {
        ProviderError::Refused => error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the provider refused the login; open the page again",
        ),
        ProviderError::Unavailable(why) => {
            tracing::warn!(error = %why, "the provider failed");
            error(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "the identity provider cannot be reached; try again shortly",
            )
        }
    }
}

fn session_error(e: SessionError) -> Response {
    match e {
        SessionError::Provider(e) => provider_error(&e),
        SessionError::Ended { set_cookies } => with_cookies(
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the session has ended",
            ),
            set_cookies,
        ),
        SessionError::Store(e) => {
            tracing::warn!(error = %e, "the session store failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the session store is unavailable; try again shortly",
            )
        }
        SessionError::Sealing => {
            tracing::error!("a proxy session could not be sealed or opened");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the session could not be read",
            )
        }
    }
}
