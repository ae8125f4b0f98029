//! The proxy's HTTP handlers: oauth2-proxy's `/oauth2/start`, `/oauth2/callback`,
//! `/oauth2/auth`, `/oauth2/sign_out` (confirmed by a same-site post), `/oauth2/userinfo`, and
//! forwarding of everything else.
//! Each parses, asks [`Sessions`](super::session::Sessions) and the provider, and renders.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tessera_core::clock::UnixMillis;
use tessera_core::seal;
use tessera_core::token::constant_time_eq;
use tessera_oidc as oidc;

use super::Proxy;
use super::answer::{error, forbidden, provider_error, redirect, session_error, with_cookies};
use super::caller::Caller;
use super::cookie::{self, MAX_LOGIN_STATES};
use super::forward::{Origin, forward};
use super::identity::{in_groups, strip_claims};
use super::session::{Current, Lookup, SessionError, SessionState};
use crate::app::RequestContext;
use crate::config::proxy::Route;
use crate::http::html;
use crate::path::{self, UnsafePath};

/// Path of the callback, on every host the proxy serves.
pub(super) const CALLBACK_PATH: &str = "/oauth2/callback";
/// How long a login may take between `/oauth2/start` and the callback.
const LOGIN_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// Most login-state cookies of one request a new login looks at (and may clear).
const MAX_LOGINS_READ: usize = 4 * MAX_LOGIN_STATES;

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
    let rd = proxy.redirects.target(asked, &origin.host);
    begin_login(&proxy, origin, rd, &headers).await
}

/// `GET /oauth2/callback?code=…&state=…`: finishes a login and starts the session.
pub(super) async fn callback(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let jar = &proxy.sessions.jar;
    let sent_state = query.state.as_deref().unwrap_or_default();
    let Some(csrf) = jar.csrf_name(sent_state) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the state is missing or malformed; open the page again",
        );
    };
    let login = crate::http::cookie(&headers, &csrf)
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
    for (name, value) in current.state.grant.headers.get(true) {
        headers.insert(name.clone(), value.clone());
    }
    with_cookies(response, current.set_cookies)
}

/// `GET /oauth2/sign_out?rd=URL`: with a session, a page whose button posts the sign-out, so
/// that another site cannot sign the user out with an image or a link; without one there is
/// nothing to end, and the browser goes on to `rd` at once.
pub(super) async fn sign_out_page(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<RdQuery>,
    headers: HeaderMap,
) -> Response {
    let target = proxy
        .redirects
        .target(query.rd.as_deref(), &caller.origin.host);
    match proxy.sessions.lookup(&headers).await {
        Ok(Lookup::Live(current)) => {
            with_cookies(sign_out_confirmation(&target), current.set_cookies)
        }
        lookup => proxy.sign_out(lookup, &headers, caller.ctx, &target).await,
    }
}

/// `POST /oauth2/sign_out` (`rd` in the query or the form): ends the session here and at the
/// provider. A browser's post from another site is refused: its `Origin` (or, without one,
/// `Sec-Fetch-Site`) says where it came from. Scripts that send neither are served.
pub(super) async fn sign_out(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<RdQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = &caller.origin;
    if posted_from_another_site(&proxy, &headers, &origin.host) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a sign-out must be posted from this site's own pages",
        );
    }
    let rd = query
        .rd
        .or_else(|| serde_urlencoded::from_bytes::<RdQuery>(&body).ok()?.rd);
    let target = proxy.redirects.target(rd.as_deref(), &origin.host);
    let lookup = proxy.sessions.lookup(&headers).await;
    proxy.sign_out(lookup, &headers, caller.ctx, &target).await
}

/// Whether a browser sent this request from a page of another site: an `Origin` (RFC 6454)
/// that is neither this host nor one `rd` may name, or else `Sec-Fetch-Site: cross-site`.
fn posted_from_another_site(proxy: &Proxy, headers: &HeaderMap, host: &str) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return !origin
            .to_str()
            .is_ok_and(|origin| proxy.redirects.allows_origin(origin, host));
    }
    headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

/// The page that asks before signing out; its form carries `rd` to the post.
fn sign_out_confirmation(target: &str) -> Response {
    let body = format!(
        "<p>Sign out of this site?</p><form method=\"post\" action=\"/oauth2/sign_out\">{}\
         <button type=\"submit\">Sign out</button></form>",
        html::hidden("rd", target)
    );
    html::page(StatusCode::OK, "Sign out", &body)
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
/// Routes are chosen by the path's normal form, which is also what the upstream receives.
pub(super) async fn proxied(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    mut request: Request,
) -> Response {
    let origin = &caller.origin;
    let route = match proxy.route_request(origin, &mut request) {
        Ok(route) => route,
        Err(unroutable) => return unroutable.answer(),
    };
    let current = match proxy.session(&caller.ctx, request.headers()).await {
        Ok(current) => current,
        Err(answer) => return answer.login_or_unauthenticated(&request),
    };
    if !in_groups(&current.state.grant.identity, &route.allowed_groups) {
        return with_cookies(forbidden(), current.set_cookies);
    }
    let cookie = proxy.sessions.jar.strip_ours(request.headers());
    strip_claims(request.headers_mut(), origin.via_trusted_proxy);
    let extra = current.state.grant.headers.get(route.pass_access_token);
    let response = forward(route, request, origin, extra, cookie).await;
    with_cookies(response, current.set_cookies)
}

/// Why a request cannot be given a route.
enum Unroutable {
    /// RFC 9112 §3.2: each `Host` could name another route.
    TwoHosts,
    /// The target has no safe reading.
    Unsafe(UnsafePath),
    /// No route serves the host and path.
    NoRoute,
}

impl Unroutable {
    /// 400, or 404 without a route.
    fn answer(self) -> Response {
        match self {
            Unroutable::TwoHosts => error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one Host header",
            ),
            Unroutable::Unsafe(why) => {
                error(StatusCode::BAD_REQUEST, "invalid_request", why.describe())
            }
            Unroutable::NoRoute => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route for this host and path",
            ),
        }
    }
}

/// The request's target with its path in normal form and its query as sent (`None`: it is
/// already normal), or why the path has none.
fn normal_target(uri: &Uri) -> Result<Option<Uri>, UnsafePath> {
    let Cow::Owned(path) = path::normalize(uri.path())? else {
        return Ok(None);
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    // A normal form has only characters the original had, and `%` escapes.
    let target = PathAndQuery::try_from(target).map_err(|_| UnsafePath::BrokenEscape)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| UnsafePath::BrokenEscape)
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
    /// The route for `request`, whose target becomes its normal form; or why it has none.
    fn route_request(&self, origin: &Origin, request: &mut Request) -> Result<&Route, Unroutable> {
        if request.headers().get_all(header::HOST).iter().count() > 1 {
            return Err(Unroutable::TwoHosts);
        }
        if let Some(normal) = normal_target(request.uri()).map_err(Unroutable::Unsafe)? {
            *request.uri_mut() = normal;
        }
        self.route(&origin.host, request.uri().path())
            .map_err(Unroutable::Unsafe)?
            .ok_or(Unroutable::NoRoute)
    }

    /// The request's live, fresh session, or why there is none.
    async fn session(
        self: &Arc<Self>,
        ctx: &RequestContext,
        headers: &HeaderMap,
    ) -> Result<Current, NoSession> {
        let current = match self.sessions.lookup(headers).await {
            Ok(Lookup::Live(current)) => current,
            Ok(Lookup::Missing { set_cookies }) => {
                return Err(NoSession {
                    set_cookies,
                    failure: None,
                });
            }
            Ok(Lookup::TimedOut { state, set_cookies }) => {
                self.revoke_later(&state, ctx.clone());
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

    /// Ends whatever session the lookup found and sends the browser to `target`.
    async fn sign_out(
        self: &Arc<Self>,
        lookup: Result<Lookup, SessionError>,
        headers: &HeaderMap,
        ctx: RequestContext,
        target: &str,
    ) -> Response {
        let cookies = match lookup {
            Ok(Lookup::Live(current)) => match self.end(&current.state, headers, &ctx).await {
                Ok(cookies) => cookies,
                Err(e) => return session_error(e),
            },
            Ok(Lookup::TimedOut { state, set_cookies }) => {
                self.revoke_later(&state, ctx);
                set_cookies
            }
            Ok(Lookup::Missing { .. }) => self.sessions.clear_all(headers),
            Err(e) => return session_error(e),
        };
        with_cookies(redirect(target), cookies)
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
    fn revoke_later(self: &Arc<Self>, state: &SessionState, ctx: RequestContext) {
        let Some(token) = state.grant.refresh_token.clone() else {
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

async fn begin_login(proxy: &Proxy, origin: &Origin, rd: String, request: &HeaderMap) -> Response {
    let verifier = oidc::random_token();
    let challenge = tessera_core::pkce::s256_challenge(&verifier);
    let login = LoginState {
        state: oidc::random_token(),
        nonce: oidc::random_token(),
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
    let Some(csrf) = jar.csrf_name(&login.state) else {
        return session_error(SessionError::Sealing);
    };
    let Some(sealed) = serde_json::to_vec(&login)
        .ok()
        .and_then(|plain| proxy.sessions.seal_for(&csrf, &plain).ok())
    else {
        return session_error(SessionError::Sealing);
    };
    if csrf.len() + 1 + sealed.len() > seal::MAX_PAIR_LEN {
        // A browser would drop the cookie and the login could never finish.
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the page address or host name is too long to log in from",
        );
    }
    let max_age = i64::try_from(LOGIN_TTL.as_secs()).unwrap_or(600);
    let mut cookies: Vec<HeaderValue> = older_logins(proxy, request)
        .into_iter()
        .map(|name| jar.clear(name))
        .collect();
    cookies.push(jar.set(&csrf, &sealed, max_age));
    with_cookies(redirect(&url), cookies)
}

/// The login-state cookies to clear as a new login starts, so that with it at most
/// [`MAX_LOGIN_STATES`] remain: those that do not open first, then the oldest. Only the first
/// [`MAX_LOGINS_READ`] are looked at: a browser holds no more than the bound.
fn older_logins<'h>(proxy: &Proxy, request: &'h HeaderMap) -> Vec<&'h str> {
    let jar = &proxy.sessions.jar;
    let mut seen = HashSet::new();
    let mut logins: Vec<(Option<UnixMillis>, &str)> = crate::http::cookie_pairs(request)
        .filter(|(name, _)| cookie::is_csrf(&jar.name, name) && seen.insert(*name))
        .take(MAX_LOGINS_READ)
        .map(|(name, sealed)| (login_expiry(proxy, name, sealed), name))
        .collect();
    // Stable: logins started within one millisecond keep the request's order, which browsers
    // make oldest first (RFC 6265 §5.4, step 2).
    logins.sort_by_key(|(expiry, _)| *expiry);
    let excess = (logins.len() + 1).saturating_sub(MAX_LOGIN_STATES);
    logins
        .into_iter()
        .take(excess)
        .map(|(_, name)| name)
        .collect()
}

/// When the login sealed in cookie `name` expires, if it opens.
fn login_expiry(proxy: &Proxy, name: &str, sealed: &str) -> Option<UnixMillis> {
    let plain = proxy.sessions.open_for(name, sealed)?;
    let login: LoginState = serde_json::from_slice(&plain).ok()?;
    Some(login.expires_at)
}
