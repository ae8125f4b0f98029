//! The one place where failures become HTTP answers, for both wings: OAuth 2.0 error JSON
//! (RFC 6749 §5.2) with `Cache-Control: no-store`, `WWW-Authenticate` for client and bearer
//! failures, `Retry-After` for a refusal that lasts a while, and, for internal faults, a short
//! correlation id in the description that is also in the log line.

use std::fmt::Display;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

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

    /// A 400 `invalid_request` with a description.
    pub fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// The same answer with a `WWW-Authenticate` challenge (RFC 6750 §3, RFC 7617).
    #[must_use]
    pub fn with_challenge(self, challenge: &'static str) -> OAuthError {
        OAuthError {
            www_authenticate: Some(challenge),
            ..self
        }
    }

    /// The same answer with `Retry-After: seconds`.
    #[must_use]
    pub fn with_retry_after(self, seconds: u64) -> OAuthError {
        OAuthError {
            retry_after: Some(seconds),
            ..self
        }
    }

    /// The HTTP status it answers with (413 for an oversized body, 400 for a malformed one).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error` code, for tests of the wings' mappings.
    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        self.error
    }

    /// The `error_description`, for tests of the wings' mappings.
    #[cfg(test)]
    pub(crate) fn description(&self) -> &str {
        &self.description
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut response = no_store((self.status, axum::Json(body)).into_response());
        let headers = response.headers_mut();
        if let Some(challenge) = self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A kind of internal fault: the client is told little (what failed, whether to retry) and a
/// correlation id; the log line says everything under the same id.
#[derive(Debug, PartialEq, Eq)]
pub struct Fault {
    /// 500, or 502/503 for a dependency that may come back.
    pub status: StatusCode,
    /// `server_error` or `temporarily_unavailable` (RFC 6749 §4.1.2.1).
    pub error: &'static str,
    /// What the client is told, before the correlation id.
    pub description: &'static str,
    /// The log line's message.
    pub log: &'static str,
}

impl Fault {
    /// The answer to this fault, caused by `cause`: logged as an error with a new correlation
    /// id, which the description ends with.
    pub fn answer(&self, cause: &dyn Display) -> OAuthError {
        let id = correlation_id();
        tracing::error!(correlation_id = %id, error = %cause, "{}", self.log);
        OAuthError::new(
            self.status,
            self.error,
            format!("{} (correlation id {id})", self.description),
        )
    }
}

/// Marks an answer that carries tokens or token errors as uncacheable (RFC 6749 §5.1).
pub fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A short id that ties a 5xx answer to its log line.
fn correlation_id() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::body::to_bytes;
    use serde_json::Value;

    use super::*;
    use crate::web::log_capture::{correlation_id, logged};

    async fn body(response: Response) -> Value {
        let bytes = to_bytes(response.into_body(), 4096).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn an_error_is_json_that_no_one_caches_with_its_challenge_and_retry_after() {
        let response = OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", "no")
            .with_challenge(r#"Basic realm="tessera""#)
            .with_retry_after(7)
            .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let headers = response.headers();
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::PRAGMA], "no-cache");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            r#"Basic realm="tessera""#
        );
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let body = body(response).await;
        assert_eq!(
            body,
            json!({"error": "invalid_client", "error_description": "no"})
        );
    }

    #[tokio::test]
    async fn a_fault_answers_with_the_correlation_id_it_logs() {
        let fault = Fault {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "storage is unavailable; retry later",
            log: "storage failed",
        };
        let (answer, log) = logged(|| fault.answer(&"connection refused"));
        let response = answer.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
        let body = body(response).await;
        assert_eq!(body["error"], "temporarily_unavailable");
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with("storage is unavailable; retry later (correlation id "),
            "{description}"
        );
        let id = correlation_id(description).expect("12 hex digits");
        let line = log
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("the id is in the log: {log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("storage failed"), "{line}");
        assert!(line.contains(&format!("correlation_id={id}")), "{line}");
        assert!(line.contains("error=connection refused"), "{line}");
        let (again, _) = logged(|| fault.answer(&"connection refused"));
        assert_ne!(
            correlation_id(&again.description),
            Some(id),
            "each fault has its own id"
        );
    }
}
