//! The proxy's own answers: redirects, cookies on any answer, and failures rendered as OAuth
//! error JSON (RFC 6749 §5.2, through [`OAuthError`]) with the status that says whose fault
//! they are.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::provider::ProviderError;
use super::session::SessionError;
use crate::web::OAuthError;

/// 302 to `location` (already checked to be ours or allowed).
pub(super) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad redirect target",
        ),
    }
}

/// `response` with these `Set-Cookie`s added.
pub(super) fn with_cookies(mut response: Response, cookies: Vec<HeaderValue>) -> Response {
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// 403: signed in, but in none of the groups the route allows.
pub(super) fn forbidden() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "you are not in a group allowed here",
    )
}

/// An error answer as OAuth error JSON with `Cache-Control: no-store`.
pub(super) fn error(
    status: StatusCode,
    code: &'static str,
    description: impl Into<String>,
) -> Response {
    OAuthError::new(status, code, description).into_response()
}

/// The provider refused (403: the login is over) or failed (502: try again).
pub(super) fn provider_error(e: &ProviderError) -> Response {
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

/// A session failure: the store (503), the provider, a session that ended (401), or a
/// session that cannot be opened (500).
pub(super) fn session_error(e: SessionError) -> Response {
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
