//! The `session:` section: how long a login lasts.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSession {
    /// Absolute lifetime of a login (and of the SSO cookie).
    max_lifetime: String,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            max_lifetime: "12h".into(),
        }
    }
}

/// The session's absolute lifetime.
pub(super) fn validate(raw: &RawSession) -> Result<Duration, Invalid> {
    duration("session.max_lifetime", &raw.max_lifetime)
}
