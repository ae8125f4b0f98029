//! The provider's failures as answers: each [`AppError`] maps here, in one table, to its status,
//! RFC 6749 §5.2 code and challenge, or to an internal fault with a correlation id; the one
//! rendering is [`OAuthError`]'s.

use axum::http::StatusCode;

use crate::app::AppError;
use crate::web::{Fault, OAuthError};

/// The challenge of a failed client authentication (RFC 6749 §5.2, RFC 7617).
const BASIC_CHALLENGE: &str = r#"Basic realm="tessera""#;
/// The challenge of a refused bearer token (RFC 6750 §3.1).
const BEARER_CHALLENGE: &str = r#"Bearer error="invalid_token""#;
/// The challenge of a bearer token that is valid but not enough (RFC 6750 §3.1).
const SCOPE_CHALLENGE: &str = r#"Bearer error="insufficient_scope""#;

/// The store failed: retryable.
const STORAGE: Fault = Fault {
    status: StatusCode::SERVICE_UNAVAILABLE,
    error: "temporarily_unavailable",
    description: "storage is unavailable; retry later",
    log: "storage failed",
};

/// Keys or signing failed.
const INTERNAL: Fault = Fault {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    error: "server_error",
    description: "internal error",
    log: "internal error",
};

impl From<AppError> for OAuthError {
    fn from(e: AppError) -> OAuthError {
        let (status, code, challenge) = match verdict(&e) {
            Verdict::Refusal(status, code, challenge) => (status, code, challenge),
            Verdict::Fault(fault) => return fault.answer(&e),
        };
        if let AppError::InvalidGrant { reason } = &e {
            tracing::info!(reason, "invalid_grant");
        }
        let mut answer = OAuthError::new(status, code, e.to_string());
        if let Some(challenge) = challenge {
            answer = answer.with_challenge(challenge);
        }
        match e {
            AppError::ClientRateLimited { retry_after } => answer.with_retry_after(retry_after),
            _ => answer,
        }
    }
}

/// How a failure answers.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// A refusal the client can act on: status, code, and the `WWW-Authenticate` challenge if
    /// any; the description is the error's own text.
    Refusal(StatusCode, &'static str, Option<&'static str>),
    /// Not the client's doing.
    Fault(&'static Fault),
}

/// The table: every provider failure's answer.
fn verdict(e: &AppError) -> Verdict {
    use Verdict::Refusal;
    match e {
        AppError::InvalidRequest(_) => Refusal(StatusCode::BAD_REQUEST, "invalid_request", None),
        AppError::InvalidClient => Refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some(BASIC_CHALLENGE),
        ),
        // RFC 6749 §5.2 has no code for "too many attempts"; `invalid_client` is the one that
        // says what was refused (the client authentication), 429 and `Retry-After` say why and
        // until when. No challenge: nothing was checked.
        AppError::ClientRateLimited { .. } => {
            Refusal(StatusCode::TOO_MANY_REQUESTS, "invalid_client", None)
        }
        AppError::InvalidGrant { .. } => Refusal(StatusCode::BAD_REQUEST, "invalid_grant", None),
        AppError::UnsupportedGrantType(_) => {
            Refusal(StatusCode::BAD_REQUEST, "unsupported_grant_type", None)
        }
        AppError::InvalidScope(_) => Refusal(StatusCode::BAD_REQUEST, "invalid_scope", None),
        AppError::InvalidToken => Refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            Some(BEARER_CHALLENGE),
        ),
        AppError::NotAdmin => Refusal(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            Some(SCOPE_CHALLENGE),
        ),
        AppError::UnknownPerson { .. } => Refusal(StatusCode::NOT_FOUND, "not_found", None),
        AppError::Store(_) => Verdict::Fault(&STORAGE),
        AppError::Keys(_) | AppError::Signing(_) | AppError::Sealing(_) => {
            Verdict::Fault(&INTERNAL)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::http::header;
    use axum::response::IntoResponse;
    use tessera_store::StoreError;

    use super::*;
    use crate::keys::KeyError;
    use crate::web::log_capture::{correlation_id, logged};

    #[test]
    fn every_provider_failure_has_its_status_code_and_challenge() {
        let refusal = |status, code, challenge| Verdict::Refusal(status, code, challenge);
        let table = [
            (
                AppError::InvalidRequest("x".into()),
                refusal(StatusCode::BAD_REQUEST, "invalid_request", None),
            ),
            (
                AppError::InvalidClient,
                refusal(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    Some(r#"Basic realm="tessera""#),
                ),
            ),
            (
                AppError::ClientRateLimited { retry_after: 3 },
                refusal(StatusCode::TOO_MANY_REQUESTS, "invalid_client", None),
            ),
            (
                AppError::InvalidGrant { reason: "spent" },
                refusal(StatusCode::BAD_REQUEST, "invalid_grant", None),
            ),
            (
                AppError::UnsupportedGrantType("password".into()),
                refusal(StatusCode::BAD_REQUEST, "unsupported_grant_type", None),
            ),
            (
                AppError::InvalidScope("x".into()),
                refusal(StatusCode::BAD_REQUEST, "invalid_scope", None),
            ),
            (
                AppError::InvalidToken,
                refusal(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    Some(r#"Bearer error="invalid_token""#),
                ),
            ),
            (
                AppError::NotAdmin,
                refusal(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    Some(r#"Bearer error="insufficient_scope""#),
                ),
            ),
            (
                AppError::UnknownPerson { name: "x".into() },
                refusal(StatusCode::NOT_FOUND, "not_found", None),
            ),
            (store_down(), Verdict::Fault(&STORAGE)),
            (
                AppError::Keys(KeyError::Store(StoreError::Corrupt { what: "key" })),
                Verdict::Fault(&INTERNAL),
            ),
        ];
        for (error, verdict) in table {
            assert_eq!(super::verdict(&error), verdict, "{error:?}");
        }
    }

    #[test]
    fn a_refusal_says_the_errors_own_text_and_a_rate_limit_when_to_retry() {
        let answer = OAuthError::from(AppError::ClientRateLimited { retry_after: 3 });
        let response = answer.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
        let (answer, log) = logged(|| OAuthError::from(AppError::InvalidGrant { reason: "spent" }));
        let response = answer.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(
            log.contains("invalid_grant") && log.contains("reason=\"spent\""),
            "{log}"
        );
    }

    #[test]
    fn internal_faults_answer_with_the_correlation_id_they_log() {
        let signing = AppError::Signing(tessera_core::jwt::JwtError::Signing);
        for (error, status, code, said, logged_as) in [
            (
                store_down(),
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "storage is unavailable; retry later",
                "storage failed",
            ),
            (
                signing,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal error",
                "internal error",
            ),
        ] {
            let cause = error.to_string();
            let (answer, log) = logged(|| OAuthError::from(error));
            assert_eq!((answer.status(), answer.code()), (status, code));
            let description = answer.description();
            assert!(description.starts_with(said), "{description}");
            let id = correlation_id(description).expect("an id ends the description");
            let line = log.lines().find(|l| l.contains(id)).unwrap_or_default();
            assert!(line.contains(logged_as), "{log}");
            assert!(line.contains(&cause), "{log}");
        }
    }

    fn store_down() -> AppError {
        AppError::Store(StoreError::Unavailable {
            source: "connection refused".into(),
        })
    }
}
