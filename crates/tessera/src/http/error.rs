//! The one place where failures become HTTP answers: OAuth 2.0 error JSON (RFC 6749 §5.2) with
//! `Cache-Control: no-store`, `WWW-Authenticate` for client and bearer failures.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppError;

/// An OAuth error answer.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    www_authenticate: Option<&'static str>,
    /// Seconds for `Retry-After` (RFC 9110 §10.2.3), on a 429.
    retry_after: Option<u64>,
}

impl OAuthError {
    /// A 400 `invalid_request` with a description.
    pub fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// The HTTP status it answers with (413 for an oversized body, 400 for a malformed one).
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    /// Any error code and status.
    pub fn new(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
            www_authenticate: None,
            retry_after: None,
        }
    }
}

impl From<AppError> for OAuthError {
    fn from(e: AppError) -> OAuthError {
        let description = e.to_string();
        let (status, error) = match &e {
            AppError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            AppError::InvalidClient => {
                return OAuthError {
                    www_authenticate: Some(r#"Basic realm="tessera""#),
                    ..OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
                };
            }
            // RFC 6749 §5.2 has no code for "too many attempts"; `invalid_client` is the one
            // that says what was refused (the client authentication), 429 and `Retry-After`
            // say why and until when. No challenge: nothing was checked.
            AppError::ClientRateLimited { retry_after } => {
                return OAuthError {
                    retry_after: Some(*retry_after),
                    ..OAuthError::new(StatusCode::TOO_MANY_REQUESTS, "invalid_client", description)
                };
            }
            AppError::InvalidGrant { reason } => {
                tracing::info!(reason, "invalid_grant");
                (StatusCode::BAD_REQUEST, "invalid_grant")
            }
            AppError::UnsupportedGrantType(_) => {
                (StatusCode::BAD_REQUEST, "unsupported_grant_type")
            }
            AppError::InvalidScope(_) => (StatusCode::BAD_REQUEST, "invalid_scope"),
            AppError::InvalidToken => {
                return OAuthError {
                    www_authenticate: Some(r#"Bearer error="invalid_token""#),
                    ..OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
                };
            }
            AppError::Store(_) => {
                let id = correlation_id();
                tracing::error!(correlation_id = %id, error = %e, "storage failed");
                return OAuthError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    format!("storage is unavailable; retry later (correlation id {id})"),
                );
            }
            AppError::Keys(_) | AppError::Signing(_) => {
                let id = correlation_id();
                tracing::error!(correlation_id = %id, error = %e, "internal error");
                return OAuthError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("internal error (correlation id {id})"),
                );
            }
        };
        OAuthError::new(status, error, description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut response = no_store((self.status, axum::Json(body)).into_response());
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Marks an answer that carries tokens or token errors as uncacheable (RFC 6749 §5.1).
pub(super) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A short id that ties a 5xx answer to its log line.
pub(super) fn correlation_id() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}
