//! The `login:` section: how many failed logins are allowed.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogin {
    /// Failed logins allowed per user, and per IP, within `failure_window`.
    max_failures: u32,
    /// The window over which failures are counted.
    failure_window: String,
}

impl Default for RawLogin {
    fn default() -> Self {
        RawLogin {
            max_failures: 5,
            failure_window: "5m".into(),
        }
    }
}

/// The validated `login:` section.
pub(super) struct Login {
    pub(super) max_failures: u32,
    pub(super) failure_window: Duration,
}

pub(super) fn validate(raw: &RawLogin) -> Result<Login, Invalid> {
    Ok(Login {
        max_failures: raw.max_failures,
        failure_window: duration("login.failure_window", &raw.failure_window)?,
    })
}
