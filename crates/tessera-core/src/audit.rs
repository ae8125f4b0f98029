//! Audit events: one JSON object per line, the shape a SIEM reads (DESIGN.md, "Audit events").
//! Tokens appear only as `token_id`, the first 16 hex digits of their SHA-256.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::UnixMillis;

/// How loudly an event should be heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Normal operation.
    Info,
    /// Worth a look: a grace reuse, a failed login.
    Warning,
    /// Worth waking someone: a replayed refresh token.
    Alert,
}

/// What happened, with the fields that belong to that kind of event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event")]
pub enum Event {
    /// A user authenticated at the login form.
    LoginSucceeded,
    /// A login attempt failed.
    LoginFailed {
        /// Why: `bad_credentials`, or `rate_limited` (the first refusal of a limited window;
        /// the others are counted in [`Event::RateLimitEnded`]); at an upstream provider
        /// `upstream_refused`, `bad_state`, `no_code`, `upstream_rejected` or
        /// `upstream_unavailable`.
        reason: String,
    },
    /// A client presented a wrong secret at the token, revocation or introspection endpoint.
    ClientAuthenticationFailed {
        /// Why: `bad_secret`, or `rate_limited` (the first refusal of a limited window).
        reason: String,
    },
    /// A limited window of a user, a client or an address is over: one line with the number of
    /// requests it refused, instead of one line each.
    RateLimitEnded {
        /// Which limit: `login` or `client_authentication`.
        limiter: String,
        /// How many requests the window refused.
        refused: u32,
    },
    /// Tokens were issued for an authorization code.
    TokenIssued {
        /// The grant that issued them.
        grant_type: String,
    },
    /// A refresh token was rotated.
    TokenRefreshed,
    /// A used refresh token came back inside the grace period and got the same successor.
    ExpiredRefreshTokenUsed {
        /// The IP of the first use.
        first_used_ip: String,
        /// Milliseconds since the first use.
        first_used_ms_ago: i64,
    },
    /// A used refresh token came back after the grace period.
    RefreshTokenReplayDetected {
        /// The IP of the first use.
        first_used_ip: String,
        /// Milliseconds since the first use.
        first_used_ms_ago: i64,
        /// Whether the session was revoked for it.
        session_revoked: bool,
    },
    /// A session was revoked.
    SessionRevoked {
        /// Why: `replay`, `revocation_endpoint`, `logout`, `code_reuse`, `idle_timeout`,
        /// `absolute_timeout`, `user_ended` (the account page), `sign_out_everywhere`, `admin`,
        /// `user_disabled`, `user_removed` (gone from the users file), `upstream_revalidation`.
        reason: String,
    },
    /// A token was presented for a session past its absolute end.
    SessionExpired,
    /// A refresh checked the person with their directory again, and it confirmed them (their
    /// groups as the directory now gives them).
    UpstreamRevalidated,
    /// A refresh could not confirm the person with their directory.
    UpstreamRevalidationFailed {
        /// Why: `not_found`, `disabled` or `upstream_refresh_rejected` (the session is revoked),
        /// or `unreachable` or `no_upstream_refresh_token` (refreshes go on until
        /// `revalidate_max_staleness` past the last good check).
        reason: String,
    },
    /// An admin disabled a person (`uid`): no login, no refresh until enabled; `admin_uid` says
    /// who. Their sessions' ends follow as `SessionRevoked` with `reason: user_disabled`.
    UserDisabled,
    /// An admin enabled a disabled person (`uid`) again; `admin_uid` says who.
    UserEnabled,
    /// A signing key was added.
    KeyRotated {
        /// The new key's id.
        kid: String,
        /// Its algorithm.
        alg: String,
    },
}

impl Event {
    /// The severity that belongs to this kind of event.
    pub fn severity(&self) -> Severity {
        match self {
            Event::RefreshTokenReplayDetected { .. } => Severity::Alert,
            Event::ExpiredRefreshTokenUsed { .. }
            | Event::LoginFailed { .. }
            | Event::ClientAuthenticationFailed { .. }
            | Event::RateLimitEnded { .. }
            | Event::UpstreamRevalidationFailed { .. } => Severity::Warning,
            _ => Severity::Info,
        }
    }
}

/// Who and where an event concerns. Every field is optional: a failed login has no session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subjects {
    /// The user.
    pub uid: Option<String>,
    /// The connector the user signed in through (`local` for the users file).
    pub connector_id: Option<String>,
    /// The session (family) id.
    pub session_id: Option<String>,
    /// The client id.
    pub client_id: Option<String>,
    /// The request's source IP.
    pub source_ip: Option<String>,
    /// The request's `User-Agent`.
    pub user_agent: Option<String>,
    /// The first 16 hex digits of the presented token's SHA-256.
    pub token_id: Option<String>,
    /// The admin who acted (`SessionRevoked` with `reason: admin` or `user_disabled`,
    /// `UserDisabled`, `UserEnabled`): their
    /// `sub` for the admin API, `cli` for `tessera sessions` and `tessera users`. Absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_uid: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    severity: Severity,
    #[serde(flatten)]
    event: &'a Event,
    #[serde(flatten)]
    subjects: &'a Subjects,
}

/// Renders one event as a JSON line (without the newline).
pub fn render(at: UnixMillis, event: &Event, subjects: &Subjects) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| at.0.to_string());
    let line = Line {
        time,
        severity: event.severity(),
        event,
        subjects,
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn a_replay_renders_as_one_alert_line_with_its_own_fields() {
        let event = Event::RefreshTokenReplayDetected {
            first_used_ip: "10.0.0.1".into(),
            first_used_ms_ago: 1234,
            session_revoked: true,
        };
        let subjects = Subjects {
            uid: Some("dev".into()),
            token_id: Some("0123456789abcdef".into()),
            ..Subjects::default()
        };
        let line = render(UnixMillis(1_700_000_000_123), &event, &subjects);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "RefreshTokenReplayDetected");
        assert_eq!(v["severity"], "alert");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["first_used_ms_ago"], 1234);
        assert_eq!(v["uid"], "dev");
        assert_eq!(v["session_id"], serde_json::Value::Null);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_rate_limit_summary_names_its_limiter_and_count_as_a_warning() {
        let event = Event::RateLimitEnded {
            limiter: "login".into(),
            refused: 399,
        };
        let subjects = Subjects {
            source_ip: Some("2001:db8:1:2::/64".into()),
            ..Subjects::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(UnixMillis(0), &event, &subjects)).unwrap();
        assert_eq!(v["event"], "RateLimitEnded");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["limiter"], "login");
        assert_eq!(v["refused"], 399);
        assert_eq!(v["source_ip"], "2001:db8:1:2::/64");
    }
}
