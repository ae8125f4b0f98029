//! The `refresh_token:` section: the sliding lifetime and the redeem policy.

use std::time::Duration;

use serde::Deserialize;
use tessera_core::redeem::{OnReplay, RedeemPolicy};

use super::{Invalid, duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRefreshToken {
    /// Sliding lifetime of each refresh token.
    ttl: String,
    /// How long a used refresh token may be presented again with the same answer.
    grace_period_millis: u64,
    /// Whether the grace applies only to the IP that first used the token.
    grace_requires_same_ip: bool,
    /// `revoke_session` (default) or `reject`.
    on_replay: String,
}

impl Default for RawRefreshToken {
    fn default() -> Self {
        RawRefreshToken {
            ttl: "15m".into(),
            grace_period_millis: 0,
            grace_requires_same_ip: false,
            on_replay: "revoke_session".into(),
        }
    }
}

/// The validated `refresh_token:` section.
pub(super) struct RefreshToken {
    pub(super) ttl: Duration,
    pub(super) policy: RedeemPolicy,
}

pub(super) fn validate(raw: &RawRefreshToken) -> Result<RefreshToken, Invalid> {
    let on_replay = match raw.on_replay.as_str() {
        "revoke_session" => OnReplay::RevokeSession,
        "reject" => OnReplay::Reject,
        other => {
            return Err((
                "refresh_token.on_replay".into(),
                format!("`{other}` is not one of revoke_session, reject"),
            ));
        }
    };
    Ok(RefreshToken {
        ttl: duration("refresh_token.ttl", &raw.ttl)?,
        policy: RedeemPolicy {
            grace_period: Duration::from_millis(raw.grace_period_millis),
            grace_requires_same_ip: raw.grace_requires_same_ip,
            on_replay,
        },
    })
}
