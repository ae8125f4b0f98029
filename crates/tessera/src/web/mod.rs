//! The floor both wings stand on, the provider (`http/`) and the proxy (`proxy/`): cookies,
//! the client's address behind trusted proxies, the few HTML pages, and the one rendering of
//! failures as OAuth 2.0 error JSON (RFC 6749 §5.2) with correlation ids for internal faults.
//! It knows neither wing: each maps its own domain errors onto [`OAuthError`] in one place
//! (`http::error`, `proxy::answer`).

pub mod cookie;
pub mod error;
pub mod html;
pub mod requester;

pub use error::{Fault, OAuthError, no_store};

#[cfg(test)]
pub(crate) mod log_capture;
