//! The `session:` section: how long a login lasts, and how long its SSO session may go unused.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSession {
    /// Absolute lifetime of a login (and of the SSO cookie).
    max_lifetime: String,
    /// An SSO session not used this long no longer answers `/authorize` silently.
    sso_idle_timeout: String,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            max_lifetime: "12h".into(),
            sso_idle_timeout: "30m".into(),
        }
    }
}

/// The validated `session:` section.
pub(super) struct SessionLimits {
    pub(super) max_lifetime: Duration,
    pub(super) sso_idle_timeout: Duration,
}

pub(super) fn validate(raw: &RawSession) -> Result<SessionLimits, Invalid> {
    Ok(SessionLimits {
        max_lifetime: duration("session.max_lifetime", &raw.max_lifetime)?,
        sso_idle_timeout: duration("session.sso_idle_timeout", &raw.sso_idle_timeout)?,
    })
}
