//! Failures of the use cases, in domain terms. `http::error` maps them to OAuth 2.0 error
//! codes and statuses, in one place.

use tessera_store::StoreError;

use crate::keys::KeyError;

/// A use case failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed (RFC 6749 §5.2 `invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// Client authentication failed (`invalid_client`, 401).
    #[error("client authentication failed")]
    InvalidClient,
    /// Too many wrong secrets for this client or from this address: 429 `invalid_client` with
    /// `Retry-After`.
    #[error("too many failed client authentications; retry in {retry_after} seconds")]
    ClientRateLimited {
        /// Seconds until a retry may be admitted.
        retry_after: u64,
    },
    /// The code or refresh token is not (or no longer) good (`invalid_grant`). The reason goes to
    /// the log and the audit, never to the client.
    #[error("the grant is invalid or expired")]
    InvalidGrant {
        /// Why, for the log.
        reason: &'static str,
    },
    /// A `grant_type` the token endpoint does not serve (`unsupported_grant_type`).
    #[error("grant_type `{0}` is not supported")]
    UnsupportedGrantType(String),
    /// A scope beyond the granted one (`invalid_scope`).
    #[error("{0}")]
    InvalidScope(String),
    /// A bearer token is missing, malformed, expired or revoked (RFC 6750 §3.1).
    #[error("the access token is invalid")]
    InvalidToken,
    /// A valid access token of someone in none of `admin.groups` (RFC 6750 §3.1
    /// `insufficient_scope`, 403).
    #[error("the token's person is in none of the groups that `admin.groups` names")]
    NotAdmin,
    /// An admin named nobody tessera knows: neither a local user nor a directory person's `sub`.
    #[error(
        "no local user `{name}`, and no directory person by that sub (`<connector id>:<id>`, as session listings show it)"
    )]
    UnknownPerson {
        /// The name given.
        name: String,
    },
    /// The store failed: retryable (`temporarily_unavailable`, 503).
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    /// Keys could not be loaded or used (`server_error`).
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    /// Signing failed (`server_error`).
    #[error("signing failed: {0}")]
    Signing(#[from] tessera_core::jwt::JwtError),
    /// Sealing an upstream secret failed (`server_error`).
    #[error("sealing failed: {0}")]
    Sealing(#[from] tessera_core::seal::SealError),
}
