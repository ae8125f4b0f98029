//! The proxy's HTTP handlers: oauth2-proxy's `/oauth2/start`, `/oauth2/callback`,
//! `/oauth2/auth`, `/oauth2/sign_out` (confirmed by a same-site post; by default on through the
//! provider's logout and back to `/oauth2/signed_out`), `/oauth2/userinfo`, and forwarding of
//! everything else.
//! Each parses, asks [`Sessions`](super::session::Sessions) and the provider, and renders.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tessera_oidc as oidc;

use super::Proxy;
use super::answer::{forbidden, redirect, with_cookies};
use super::caller::Caller;
use super::forward::{Origin, forward};
use super::identity::{in_groups, strip_claims};
use super::login::{CallbackQuery, LOGIN_TTL, LoginCookies, LoginState, Returning};
use super::provider::SignIn;
use super::session::{Current, Lookup, SessionError, SessionState, Timeout};
use crate::app::RequestContext;
use crate::config::proxy::Route;
use crate::path::{self, UnsafePath};
use crate::web::{OAuthError, html};

/// Path of the callback, on every host the proxy serves.
pub(super) const CALLBACK_PATH: &str = "/oauth2/callback";
/// Path where the provider's logout sends the browser back (its `post_logout_redirect_uri`),
/// beside the callback.
pub(super) const SIGNED_OUT_PATH: &str = "/oauth2/signed_out";
/// `?rd=`.
#[derive(Deserialize)]
pub(super) struct RdQuery {
    rd: Option<String>,
}

/// `GET /oauth2/start?rd=URL` (and `/oauth2/sign_in`, where nginx's `error_page 401` sends
/// the browser, with the page in `X-Auth-Request-Redirect` as oauth2-proxy reads it): begins a
/// login at the provider, which asks for credentials when this browser's last session timed
/// out or was signed out of.
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
    let (sign_in, set_cookies) = proxy.sign_in_for(&headers, &caller.ctx).await;
    let answer = begin_login(&proxy, origin, rd, sign_in, &headers).await;
    with_cookies(answer, set_cookies)
}

/// `GET /oauth2/callback?code=…&state=…`: finishes a login and starts the session.
pub(super) async fn callback(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let returning = match LoginCookies::new(&proxy.sessions).returning(&query, &headers) {
        Ok(returning) => returning,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    match proxy.start_session(&returning, &headers, &caller.ctx).await {
        Ok(mut cookies) => {
            cookies.push(proxy.sessions.jar.clear(&returning.cookie));
            if returning.login.sign_in == SignIn::Credentials {
                cookies.push(proxy.sessions.credentials_given());
            }
            with_cookies(redirect(&returning.login.rd), cookies)
        }
        Err(e) => e.into_response(),
    }
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
    let origin = &caller.origin;
    let target = proxy.redirects.target(query.rd.as_deref(), &origin.host);
    match proxy.sessions.lookup(&headers).await {
        Ok(Lookup::Live(current)) => {
            with_cookies(sign_out_confirmation(&target), current.set_cookies)
        }
        lookup => {
            let signing_out = SigningOut {
                headers: &headers,
                origin,
                target: &target,
            };
            proxy.sign_out(lookup, &signing_out, caller.ctx).await
        }
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
        return OAuthError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a sign-out must be posted from this site's own pages",
        )
        .into_response();
    }
    let rd = query
        .rd
        .or_else(|| serde_urlencoded::from_bytes::<RdQuery>(&body).ok()?.rd);
    let target = proxy.redirects.target(rd.as_deref(), &origin.host);
    let lookup = proxy.sessions.lookup(&headers).await;
    let signing_out = SigningOut {
        headers: &headers,
        origin,
        target: &target,
    };
    proxy.sign_out(lookup, &signing_out, caller.ctx).await
}

/// `GET /oauth2/signed_out?state=URL`: where the provider's logout sends the browser back
/// (RP-Initiated Logout 1.0 §3); `state` is where the sign-out was to end, checked again as
/// any `rd` is, since anyone can link here.
pub(super) async fn signed_out(
    State(proxy): State<Arc<Proxy>>,
    caller: Caller,
    Query(query): Query<SignedOutQuery>,
) -> Response {
    redirect(
        &proxy
            .redirects
            .target(query.state.as_deref(), &caller.origin.host),
    )
}

/// `?state=` of `/oauth2/signed_out`.
#[derive(Deserialize)]
pub(super) struct SignedOutQuery {
    state: Option<String>,
}

/// A sign-out under way: the request, where it came to, and where it ends.
struct SigningOut<'r> {
    headers: &'r HeaderMap,
    origin: &'r Origin,
    /// `rd`, checked.
    target: &'r str,
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
    // The proxy may run alone, without the provider's `web:` section and its logo route.
    html::Theme::PLAIN.page(StatusCode::OK, "Sign out", &body)
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
        Err(unroutable) => return OAuthError::from(unroutable).into_response(),
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

/// 400, or 404 without a route.
impl From<Unroutable> for OAuthError {
    fn from(unroutable: Unroutable) -> OAuthError {
        match unroutable {
            Unroutable::TwoHosts => OAuthError::invalid_request("more than one Host header"),
            Unroutable::Unsafe(why) => OAuthError::invalid_request(why.describe()),
            Unroutable::NoRoute => OAuthError::new(
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

/// Why a request has no usable session.
enum NoSession {
    /// There is none, or it timed out or ended: the cookies clear what is left of it.
    SignedOut(Vec<HeaderValue>),
    /// A failure that is not the user's fault, such as a database outage.
    Failed(SessionError),
}

impl NoSession {
    /// After a refresh: a session the provider ended is signed out; anything else failed.
    fn after_refresh(e: SessionError) -> NoSession {
        match e {
            SessionError::Ended { set_cookies } => NoSession::SignedOut(set_cookies),
            e => NoSession::Failed(e),
        }
    }

    /// 401 (or the failure's own answer).
    fn unauthenticated(self) -> Response {
        match self {
            NoSession::SignedOut(set_cookies) => {
                let sign_in =
                    OAuthError::new(StatusCode::UNAUTHORIZED, "unauthorized", "sign in first");
                with_cookies(sign_in.into_response(), set_cookies)
            }
            NoSession::Failed(e) => e.into_response(),
        }
    }

    /// For a page a browser navigates to: the login; for anything else: 401.
    fn login_or_unauthenticated(self, request: &Request) -> Response {
        match self {
            NoSession::SignedOut(set_cookies) if navigates(request) => {
                let rd = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
                with_cookies(redirect(&format!("/oauth2/start?rd={rd}")), set_cookies)
            }
            no_session => no_session.unauthenticated(),
        }
    }
}

/// Whether a browser navigates to a page with `request`: a `GET` or `HEAD` that accepts HTML.
fn navigates(request: &Request) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD)
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}

/// The reason this process's provider audits for a sign-out at the proxy: the proxy revokes as
/// any client would at the revocation endpoint (an external provider hears exactly that).
const SIGN_OUT: &str = "revocation_endpoint";

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
        let lookup = self.sessions.lookup(headers).await;
        let current = match lookup.map_err(NoSession::Failed)? {
            Lookup::Live(current) => current,
            Lookup::Missing { set_cookies } => return Err(NoSession::SignedOut(set_cookies)),
            Lookup::TimedOut {
                state,
                timeout,
                set_cookies,
            } => {
                self.revoke_later(&state, timeout, ctx.clone());
                return Err(NoSession::SignedOut(set_cookies));
            }
        };
        let fresh = self.sessions.fresh(current, &self.provider, headers, ctx);
        fresh.await.map_err(NoSession::after_refresh)
    }

    /// How a login the browser starts with `headers` may be answered, and the cookies to set
    /// with it: with credentials when its last session timed out or was signed out of, or
    /// when it still carries the cookie of a session that is gone, because the answer that
    /// cleared it never reached it (nginx's `auth_request` passes no `Set-Cookie` of a 401 on).
    async fn sign_in_for(
        self: &Arc<Self>,
        headers: &HeaderMap,
        ctx: &RequestContext,
    ) -> (SignIn, Vec<HeaderValue>) {
        match self.sessions.lookup(headers).await {
            Ok(Lookup::TimedOut {
                state,
                timeout,
                set_cookies,
            }) => {
                self.revoke_later(&state, timeout, ctx.clone());
                (SignIn::Credentials, set_cookies)
            }
            Ok(Lookup::Missing { mut set_cookies }) if !set_cookies.is_empty() => {
                set_cookies.push(self.sessions.ask_for_credentials());
                (SignIn::Credentials, set_cookies)
            }
            _ => (self.sessions.sign_in(headers), Vec::new()),
        }
    }

    /// Exchanges the code of a returning login at the provider and starts its session;
    /// answers the session's cookies.
    async fn start_session(
        &self,
        returning: &Returning<'_>,
        headers: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let login = &returning.login;
        let grant = self
            .provider
            .exchange(
                returning.code,
                &login.redirect_uri,
                &login.verifier,
                &login.nonce,
                ctx,
            )
            .await
            .map_err(SessionError::Provider)?;
        self.sessions.create(grant, headers).await
    }

    /// Ends whatever session the lookup found and sends the browser to the target: with
    /// `sign_out_sso`, by way of the provider's logout, and the next login asks for
    /// credentials.
    async fn sign_out(
        self: &Arc<Self>,
        lookup: Result<Lookup, SessionError>,
        out: &SigningOut<'_>,
        ctx: RequestContext,
    ) -> Response {
        // A timed-out session's cookies already ask for credentials.
        let (ended, cookies) = match lookup {
            Ok(Lookup::Live(current)) => match self.end(&current.state, out.headers, &ctx).await {
                Ok(mut cookies) => {
                    if self.config.sign_out_sso {
                        cookies.push(self.sessions.ask_for_credentials());
                    }
                    (Some(current.state), cookies)
                }
                Err(e) => return e.into_response(),
            },
            Ok(Lookup::TimedOut {
                state,
                timeout,
                set_cookies,
            }) => {
                self.revoke_later(&state, timeout, ctx);
                (Some(state), set_cookies)
            }
            Ok(Lookup::Missing { .. }) => (None, self.sessions.clear_all(out.headers)),
            Err(e) => return e.into_response(),
        };
        let location = match ended {
            Some(state) if self.config.sign_out_sso => self.single_sign_out(&state, out).await,
            _ => out.target.to_owned(),
        };
        with_cookies(redirect(&location), cookies)
    }

    /// Where a sign-out sends the browser to end its single sign-on session too: the
    /// provider's logout (RP-Initiated Logout 1.0), proven by the session's id_token, which
    /// sends it on to `/oauth2/signed_out` with the target as `state`; or, with a provider
    /// that has no logout or cannot be reached, straight to the target.
    async fn single_sign_out(&self, state: &SessionState, out: &SigningOut<'_>) -> String {
        let landing = signed_out_url(&self.callback_url(out.origin));
        // The landing may be on another host (`redirect_url`'s): a path says which it is on.
        let target = if out.target.starts_with('/') {
            format!("{}://{}{}", out.origin.proto, out.origin.host, out.target)
        } else {
            out.target.to_owned()
        };
        let id_token = &state.grant.id_token;
        match self
            .provider
            .end_session_url(id_token, &landing, &target)
            .await
        {
            Ok(Some(logout)) => logout,
            Ok(None) => out.target.to_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "sign-out could not reach the provider's logout");
                out.target.to_owned()
            }
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
            && let Err(e) = self.provider.revoke(token, ctx, SIGN_OUT).await
        {
            tracing::warn!(error = %e, "sign-out could not revoke the session at the provider");
        }
        Ok(cookies)
    }

    /// Revokes a timed-out session's refresh token at the provider, without holding up the
    /// answer; the provider's audit line names the timeout.
    fn revoke_later(self: &Arc<Self>, state: &SessionState, timeout: Timeout, ctx: RequestContext) {
        let Some(token) = state.grant.refresh_token.clone() else {
            return;
        };
        let proxy = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = proxy.provider.revoke(&token, &ctx, timeout.reason()).await {
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

/// Sends the browser to log in at the provider, with a new login's state in a cookie.
async fn begin_login(
    proxy: &Proxy,
    origin: &Origin,
    rd: String,
    sign_in: SignIn,
    request: &HeaderMap,
) -> Response {
    let login = new_login(proxy, origin, rd, sign_in);
    let challenge = tessera_core::pkce::s256_challenge(&login.verifier);
    let url = match proxy
        .provider
        .authorization_url(
            &login.redirect_uri,
            &login.state,
            &login.nonce,
            &challenge,
            login.sign_in,
        )
        .await
    {
        Ok(url) => url,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    match LoginCookies::new(&proxy.sessions).start(&login, request) {
        Ok(cookies) => with_cookies(redirect(&url), cookies),
        Err(e) => OAuthError::from(e).into_response(),
    }
}

/// A login starting now from `origin`, with fresh random `state`, `nonce` and PKCE verifier.
fn new_login(proxy: &Proxy, origin: &Origin, rd: String, sign_in: SignIn) -> LoginState {
    LoginState {
        state: oidc::random_token(),
        nonce: oidc::random_token(),
        verifier: oidc::random_token(),
        redirect_uri: proxy.callback_url(origin),
        rd,
        expires_at: proxy.sessions.now().plus(LOGIN_TTL),
        sign_in,
    }
}

/// The `post_logout_redirect_uri` of a proxy whose callback is `callback`: `/oauth2/signed_out`
/// in its place. Registered exactly (RP-Initiated Logout 1.0 §3), one per callback, so the
/// page to end on travels in `state`.
pub(super) fn signed_out_url(callback: &str) -> String {
    let Ok(mut url) = url::Url::parse(callback) else {
        return SIGNED_OUT_PATH.to_owned();
    };
    let base = url.path().strip_suffix(CALLBACK_PATH).unwrap_or_default();
    let path = format!("{base}{SIGNED_OUT_PATH}");
    url.set_path(&path);
    url.set_query(None);
    url.into()
}
