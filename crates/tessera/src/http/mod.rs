//! The HTTP surface of the provider. Handlers stay thin: parse, call one [`App`] method, render.
//! Cookies, the client's address, pages and the rendering of errors are the shared floor,
//! [`crate::web`]; the provider's own mapping of its failures is `error`.

mod account;
mod admin;
mod authorize;
mod discovery;
mod error;
mod form;
mod logo;
mod ops;
mod session;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tessera_core::clock::monotonic_now;

use crate::app::{App, RequestContext};
use crate::web::OAuthError;
use crate::web::cookie::cookie;
use crate::web::html::Theme;
use crate::web::requester::{client_ip, user_agent};

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
        .route("/login", get(authorize::login_page).post(authorize::login))
        .route(
            "/connector/{connector_id}/start",
            post(authorize::upstream_start),
        )
        .route(
            "/callback/{connector_id}",
            get(authorize::upstream_callback),
        )
        .route("/token", post(token::token).fallback(post_only))
        .route("/revoke", post(token::revoke).fallback(post_only))
        .route("/introspect", post(token::introspect).fallback(post_only))
        .route("/userinfo", get(session::userinfo).post(session::userinfo))
        .route(
            "/logout",
            get(session::logout_get).post(session::logout_post),
        )
        .route("/account", get(account::show))
        .route("/account/sessions/{id}/end", post(account::end_session))
        .route(
            "/account/sign-out-everywhere",
            post(account::sign_out_everywhere),
        )
        .route(
            "/admin/v1/sessions",
            get(admin::list_sessions).fallback(admin::method_not_allowed),
        )
        .route(
            "/admin/v1/sessions/{id}",
            delete(admin::end_session).fallback(admin::method_not_allowed),
        )
        .route(
            "/admin/v1/users/{username}/disable",
            post(admin::disable_user).fallback(admin::method_not_allowed),
        )
        .route(
            "/admin/v1/users/{username}/enable",
            post(admin::enable_user).fallback(admin::method_not_allowed),
        )
        .route(logo::PATH, get(logo::logo))
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

/// The name and logo of the provider's pages (`web:`).
fn theme(app: &App) -> Theme<'_> {
    let web = &app.config.web;
    Theme {
        title: &web.title,
        logo_url: web
            .logo
            .as_ref()
            .map(|_| format!("{}{}", issuer_path(&app.issuer), logo::PATH)),
    }
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
        let user_agent = user_agent(&parts.headers);
        Ok(Ctx(RequestContext { ip, user_agent }))
    }
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
