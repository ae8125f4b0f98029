//! The one error type of the relying party, in its terms: what went wrong reaching the provider
//! (its callers retry, or keep the session), what the provider refused (the grant is dead), and
//! why an id_token was not accepted (the token is not the provider's for this client).
//!
//! Causes are part of each message, not `source`s: the command line prints a chain with `{:#}`,
//! which would say them twice.

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use reqwest::StatusCode;

/// A failure of the relying party.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The CA bundle to trust cannot be read.
    #[error("cannot read the CA bundle {}: {reason}", path.display())]
    CaBundleUnreadable {
        /// The bundle.
        path: PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// The CA bundle holds no certificate rustls accepts.
    #[error("{} holds no usable PEM certificate: {reason}", path.display())]
    CaBundleUnusable {
        /// The bundle.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No CA bundle was given and the system has no trusted roots.
    #[error("found no trusted CA certificates on this system; pass --certificate-authority FILE")]
    NoSystemRoots,
    /// The HTTPS client could not be built.
    #[error("{what}: {reason}")]
    HttpClient {
        /// The step that failed.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The provider could not be reached (refused, TLS, timeout, …).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Every cause, outermost first.
        reason: String,
    },
    /// The provider's answer could not be read to its end.
    #[error("cannot read the answer of {url}: {reason}")]
    UnreadableAnswer {
        /// What was asked.
        url: String,
        /// Every cause, outermost first.
        reason: String,
    },
    /// The provider answered with an error status (other than `invalid_grant`).
    #[error("{url} answered {status}: {description}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: StatusCode,
        /// The OAuth error (RFC 6749 §5.2) or the start of the body.
        description: String,
    },
    /// A JSON document (discovery, JWKS, …) is not what the protocol says.
    #[error("{url} did not answer the expected JSON: {reason}")]
    UnexpectedAnswer {
        /// What was asked.
        url: String,
        /// What serde found wrong.
        reason: String,
    },
    /// A token response without an id_token (OpenID Connect Core §3.1.3.3).
    #[error("{url} answered without an id_token: {reason}")]
    NoIdToken {
        /// The token endpoint.
        url: String,
        /// What serde found wrong.
        reason: String,
    },
    /// The discovery document names another issuer (OpenID Connect Discovery §4.3).
    #[error("{url} names the issuer {found}, not {expected}; check --issuer")]
    IssuerMismatch {
        /// The discovery document.
        url: String,
        /// The issuer it names.
        found: String,
        /// The issuer asked for.
        expected: String,
    },
    /// The provider answered `invalid_grant` (RFC 6749 §5.2): the code or refresh token is
    /// spent, or its session has ended.
    #[error("the provider refused the grant: {description}")]
    InvalidGrant {
        /// The provider's `error_description`, or its `error`.
        description: String,
    },
    /// The provider's authorization endpoint is not a URL.
    #[error("the authorization endpoint {url} is not a URL: {reason}")]
    NotAUrl {
        /// The endpoint as discovered.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The id_token is not a JWT (three base64url parts).
    #[error("the id_token is not a JWT")]
    NotAJwt,
    /// The id_token's payload is not base64url.
    #[error("the id_token's payload is not base64url: {reason}")]
    PayloadNotBase64 {
        /// The decoder's complaint.
        reason: String,
    },
    /// The id_token's payload lacks a claim the caller reads.
    #[error("the id_token's payload lacks a claim it needs: {reason}")]
    MissingClaim {
        /// What serde found missing.
        reason: String,
    },
    /// The id_token names a key the issuer's key set does not hold (fetch the set again: the
    /// issuer may have rotated).
    #[error("the issuer's JWKS has no key {kid}")]
    UnknownKey {
        /// The `kid` the token names.
        kid: String,
    },
    /// The id_token is not one the issuer signed for this client and this login or session.
    #[error("{0}")]
    Rejected(Rejection),
}

impl Error {
    /// Whether the token or grant itself was refused, as opposed to the provider being out of
    /// reach or answering nonsense (after which the same grant may still work).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::InvalidGrant { .. } | Error::UnknownKey { .. } | Error::Rejected(_)
        )
    }
}

/// Why an id_token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Its header does not decode (this includes `alg: none`, which is no algorithm).
    #[error("the id_token is not a JWT: {reason}")]
    Malformed {
        /// The decoder's complaint.
        reason: String,
    },
    /// Its header names no key.
    #[error("the id_token names no key (kid)")]
    NoKeyId,
    /// The key its `kid` names is not a signature key (`use` is not `sig`, RFC 7517 §4.2).
    #[error("the issuer's key {kid} is not for signatures")]
    KeyNotForSignatures {
        /// The key.
        kid: String,
    },
    /// The key names an algorithm that is not a public-key signature algorithm.
    #[error("the issuer's key {kid} names no public-key algorithm")]
    KeyAlgorithmNotAllowed {
        /// The key.
        kid: String,
    },
    /// The header's algorithm is not the one its key names.
    #[error("the id_token is signed with {token:?}, but its key is for {key:?}")]
    AlgorithmMismatch {
        /// The header's `alg`.
        token: Algorithm,
        /// The key's `alg`.
        key: Algorithm,
    },
    /// The key names no algorithm, and the header's is not one its type and curve can verify.
    #[error("the id_token is signed with {token:?}, which the issuer's key {kid} cannot verify")]
    KeyTypeMismatch {
        /// The header's `alg`.
        token: Algorithm,
        /// The key.
        kid: String,
    },
    /// The key does not parse.
    #[error("the issuer's key {kid} is unusable: {reason}")]
    UnusableKey {
        /// The key.
        kid: String,
        /// Why.
        reason: String,
    },
    /// The signature or a registered claim fails.
    #[error("the id_token does not verify: {reason}")]
    DoesNotVerify {
        /// Which check failed.
        check: Check,
        /// The verifier's message.
        reason: String,
    },
    /// After a login: the nonce is not the one its authorization request sent.
    #[error("the id_token's nonce does not match this login; try again")]
    NonceMismatch,
    /// After a refresh: the subject is not the session's.
    #[error("the refreshed id_token is for subject {found:?}, not the session's")]
    SubjectMismatch {
        /// The subject the token names.
        found: String,
    },
}

/// The check of a signed id_token that failed (OpenID Connect Core §3.1.3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The signature.
    Signature,
    /// The algorithm, against the key's family.
    Algorithm,
    /// `exp` (and `nbf`).
    Lifetime,
    /// `iss`.
    Issuer,
    /// `aud`.
    Audience,
    /// The claims' shape: a required claim missing or of the wrong type.
    Claims,
}

impl Check {
    /// The check a verification error of `jsonwebtoken` reports.
    pub(crate) fn of(kind: &jsonwebtoken::errors::ErrorKind) -> Check {
        use jsonwebtoken::errors::ErrorKind;
        match kind {
            ErrorKind::InvalidSignature => Check::Signature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Check::Algorithm,
            ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Check::Lifetime,
            ErrorKind::InvalidIssuer => Check::Issuer,
            ErrorKind::InvalidAudience => Check::Audience,
            _ => Check::Claims,
        }
    }
}
