//! The HTTP surface of the provider. Handlers stay thin: parse, call one [`App`] method, render.

mod authorize;
mod discovery;
mod error;
mod form;
pub(crate) mod html;
mod ops;
mod session;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tessera_core::clock::monotonic_now;

pub use error::OAuthError;

use crate::app::{App, RequestContext};

/// Name of the browser single-sign-on cookie.
const SSO_COOKIE: &str = "tessera_sso";
/// Name of the login form's CSRF cookie (double-submit).
const CSRF_COOKIE: &str = "tessera_csrf";

/// The router of every provider endpoint, nested under the issuer's path.
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(discovery::configuration),
        )
        .route("/jwks", get(discovery::jwks))
        .route("/kube/cluster", get(discovery::kube_cluster))
        .route(
            "/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/login", post(authorize::login))
        .route("/token", post(token::token).fallback(post_only))
        .route("/revoke", post(token::revoke).fallback(post_only))
        .route("/introspect", post(token::introspect).fallback(post_only))
        .route("/userinfo", get(session::userinfo).post(session::userinfo))
        .route(
            "/logout",
            get(session::logout_get).post(session::logout_post),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found);
    let base = issuer_path(&app.issuer);
    let routes = if base.is_empty() {
        routes
    } else {
        Router::new().nest(&base, routes)
    };
    routes
        .layer(DefaultBodyLimit::max(form::MAX_BODY))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .layer(middleware::from_fn(harden))
        .with_state(app)
}

/// One year: browsers that saw the issuer over HTTPS never try it over plain HTTP again.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// Adds the headers every answer of an HTTPS-only provider carries: HSTS, and `nosniff` so that
/// no browser renders a JSON or text answer as a page.
async fn harden(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The path part of the issuer (`""` for a bare origin).
fn issuer_path(issuer: &str) -> String {
    url::Url::parse(issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

/// Counts and times every request by its route.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = monotonic_now();
    let response = next.run(request).await;
    app.metrics.observe_request(
        &endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn post_only() -> Response {
    let mut response = OAuthError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "this endpoint accepts POST only",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn not_found() -> OAuthError {
    OAuthError::new(StatusCode::NOT_FOUND, "invalid_request", "no such endpoint")
}

/// The request's origin, for the audit log and the grace IP check.
pub struct Ctx(pub RequestContext);

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Ctx, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(
                || "unknown".to_owned(),
                |c| client_ip(c.0.ip(), &parts.headers, &app.config.trusted_proxies).to_string(),
            );
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(Ctx(RequestContext { ip, user_agent }))
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` that is not one of ours. Each proxy appends the address it saw,
/// so the list is read from the right, and nothing left of an untrusted hop is believed (a client
/// can write anything there).
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The CSRF token for a form: the browser's existing `tessera_csrf` cookie, or a new one.
fn csrf_token(headers: &HeaderMap) -> String {
    cookie(headers, CSRF_COOKIE)
        .filter(|c| c.len() == 43)
        .unwrap_or_else(|| {
            tessera_core::token::Secret::from_random("", rand::random())
                .expose()
                .to_owned()
        })
}

/// Whether a form's `csrf` field matches the `tessera_csrf` cookie (double submit).
fn csrf_matches(headers: &HeaderMap, sent: Option<&str>) -> bool {
    match (cookie(headers, CSRF_COOKIE), sent) {
        (Some(expected), Some(sent)) => {
            tessera_core::token::constant_time_eq(expected.as_bytes(), sent.as_bytes())
        }
        _ => false,
    }
}

/// The value of cookie `name`, if the request carries it.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie_pairs(headers)
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

/// Every `name=value` pair of the request's `Cookie` headers, in order (RFC 6265 §5.4: pairs
/// split at `;`, whitespace trimmed, a value in double quotes unquoted; a pair without `=` or
/// name skipped).
pub(crate) fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let (name, value) = (name.trim(), value.trim());
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (!name.is_empty()).then_some((name, value))
        })
}

/// A `Set-Cookie` value with tessera's strict defaults: `Secure; HttpOnly; SameSite=Lax`,
/// scoped to `path` (`/` when empty) and, when given, to `domain`.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    domain: Option<&str>,
    max_age_secs: i64,
) -> HeaderValue {
    let mut cookie = cookie::Cookie::build((name.to_owned(), value.to_owned()))
        .path(if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        })
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    if let Some(domain) = domain {
        cookie.set_domain(domain.to_owned());
    }
    // Cookie names and our base64url values are visible ASCII, always valid header text.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn cookie_pairs_are_split_trimmed_and_unquoted() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static(" a=1;b = \"two\" ;novalue; =anonymous;c=x=y"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("d="));
        let pairs: Vec<_> = cookie_pairs(&headers).collect();
        assert_eq!(pairs, [("a", "1"), ("b", "two"), ("c", "x=y"), ("d", "")]);
        assert_eq!(cookie(&headers, "c").as_deref(), Some("x=y"));
        assert_eq!(cookie(&headers, "novalue"), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let spoof = forwarded(&["203.0.113.9"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &spoof, &trusted),
            ip("198.51.100.1")
        );
        // Behind one trusted proxy: the address it saw.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &spoof, &trusted),
            ip("203.0.113.9")
        );
        // A client that writes its own header gets no further than the last untrusted hop.
        let chain = forwarded(&["1.2.3.4, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &chain, &trusted),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the last address believed.
        let garbage = forwarded(&["203.0.113.9, not-an-ip"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &garbage, &trusted),
            ip("10.0.0.5")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
    }
}
