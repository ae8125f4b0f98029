//! The proxy's own answers: redirects, cookies on any answer, and each of its failures mapped,
//! in one place per kind, to an [`OAuthError`] (RFC 6749 §5.2, rendered by `web::error`) with
//! the status that says whose fault it is; internal faults carry a correlation id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::login::LoginError;
use super::provider::ProviderError;
use super::session::SessionError;
use crate::web::{Fault, OAuthError};

/// The provider cannot be reached or answered nonsense; the grant may still be good.
const PROVIDER_UNREACHABLE: Fault = Fault {
    status: StatusCode::BAD_GATEWAY,
    error: "temporarily_unavailable",
    description: "the identity provider cannot be reached; try again shortly",
    log: "the provider failed",
};

/// The database behind `session.store: server` failed.
const SESSION_STORE: Fault = Fault {
    status: StatusCode::SERVICE_UNAVAILABLE,
    error: "temporarily_unavailable",
    description: "the session store is unavailable; try again shortly",
    log: "the session store failed",
};

/// A session (or a login's state) could not be sealed or opened.
const UNREADABLE_SESSION: Fault = Fault {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    error: "server_error",
    description: "the session could not be read",
    log: "a proxy session could not be sealed or opened",
};

/// 302 to `location` (already checked to be ours or allowed).
pub(super) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => OAuthError::invalid_request("bad redirect target").into_response(),
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
    OAuthError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "you are not in a group allowed here",
    )
    .into_response()
}

/// The provider refused (403: the login is over) or failed (502: try again).
impl From<ProviderError> for OAuthError {
    fn from(e: ProviderError) -> OAuthError {
        match e {
            ProviderError::Refused => OAuthError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                "the provider refused the login; open the page again",
            ),
            ProviderError::Unavailable(why) => PROVIDER_UNREACHABLE.answer(&why),
        }
    }
}

/// A login that cannot start (the page's address is too long: 400; its state cannot be sealed:
/// 500) or finish (the browser's login state is missing, expired or another: 400 or 403; the
/// provider refused it: 403).
impl From<LoginError> for OAuthError {
    fn from(e: LoginError) -> OAuthError {
        match e {
            LoginError::MalformedState => OAuthError::invalid_request(
                "the state is missing or malformed; open the page again",
            ),
            LoginError::NoLogin => OAuthError::invalid_request(
                "the login state is missing or expired (cookies off, or a login older than 10 minutes); open the page again",
            ),
            LoginError::StateMismatch => OAuthError::new(
                StatusCode::FORBIDDEN,
                "invalid_request",
                "the state does not match this browser's login; open the page again",
            ),
            LoginError::Refused(why) => OAuthError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!("the provider refused the login: {why}"),
            ),
            LoginError::NoCode => OAuthError::invalid_request("no code"),
            LoginError::TooLong => OAuthError::invalid_request(
                "the page address or host name is too long to log in from",
            ),
            LoginError::Unsealable => {
                UNREADABLE_SESSION.answer(&"a login state could not be sealed")
            }
        }
    }
}

/// A session failure: the store (503), the provider, a session that ended (401, clearing its
/// cookies), or a session that cannot be opened (500).
impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let answer = match self {
            SessionError::Ended { set_cookies } => {
                let ended = OAuthError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the session has ended",
                );
                return with_cookies(ended.into_response(), set_cookies);
            }
            SessionError::Provider(e) => OAuthError::from(e),
            SessionError::Store(e) => SESSION_STORE.answer(&e),
            SessionError::Sealing => UNREADABLE_SESSION.answer(&SessionError::Sealing),
        };
        answer.into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::body::to_bytes;
    use serde_json::Value;
    use tessera_store::StoreError;

    use super::*;
    use crate::web::log_capture::{correlation_id, logged};

    async fn json(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), 4096).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn store_down() -> SessionError {
        SessionError::Store(StoreError::Unavailable {
            source: "connection refused".into(),
        })
    }

    fn provider_down() -> SessionError {
        SessionError::Provider(ProviderError::Unavailable("discovery: timed out".into()))
    }

    #[tokio::test]
    async fn the_proxys_faults_answer_with_the_correlation_id_they_log() {
        for (failure, status, code, said, logged_as, cause) in [
            (
                store_down(),
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the session store is unavailable; try again shortly",
                "the session store failed",
                "connection refused",
            ),
            (
                provider_down(),
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "the identity provider cannot be reached; try again shortly",
                "the provider failed",
                "discovery: timed out",
            ),
            (
                SessionError::Sealing,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the session could not be read",
                "a proxy session could not be sealed or opened",
                "",
            ),
        ] {
            let (response, log) = logged(|| failure.into_response());
            assert_eq!(response.status(), status);
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
            let body = json(response).await;
            assert_eq!(body["error"], code);
            let description = body["error_description"].as_str().unwrap();
            assert!(description.starts_with(said), "{description}");
            let id = correlation_id(description).expect("an id ends the description");
            let line = log.lines().find(|l| l.contains(id)).unwrap_or_default();
            assert!(line.contains("ERROR") && line.contains(logged_as), "{log}");
            assert!(line.contains(cause), "{log}");
        }
    }

    #[tokio::test]
    async fn an_ended_session_answers_401_and_clears_its_cookies_without_a_fault() {
        let clearing = HeaderValue::from_static("_tp=; Max-Age=0");
        let ended = SessionError::Ended {
            set_cookies: vec![clearing.clone()],
        };
        let (response, log) = logged(|| ended.into_response());
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::SET_COOKIE], clearing);
        let body = json(response).await;
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(body["error_description"], "the session has ended");
        assert_eq!(log, "", "nothing to log");
        let refused = OAuthError::from(ProviderError::Refused);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.code(), "access_denied");
        assert_eq!(
            refused.description(),
            "the provider refused the login; open the page again"
        );
    }
}
