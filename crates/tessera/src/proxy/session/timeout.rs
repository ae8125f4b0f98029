//! When a proxy session is refreshed, written as seen, or ended: `proxy.session`'s durations
//! applied to a session's times. Pure: the current time comes in as an argument, so every rule
//! is tested here without a server or a clock.

use std::time::Duration;

use tessera_core::clock::UnixMillis;

use super::SessionState;

/// `proxy.session.refresh_after`, `idle_timeout` and `absolute_timeout`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// Refresh the id_token when it is older than this.
    pub(crate) refresh_after: Duration,
    /// End the session after this long without a request.
    pub(crate) idle: Duration,
    /// End the session this long after login, whatever happens.
    pub(crate) absolute: Duration,
}

/// What a session is, by its times, when a request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// Within both timeouts, and seen recently enough that the request need not be recorded.
    Live,
    /// Within both timeouts; the request is to be recorded as its last activity.
    DueForTouch,
    /// Past its idle or absolute timeout: it ends now.
    TimedOut(Timeout),
}

/// Which timeout ended a session: each has its own revocation reason in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Unused for `idle_timeout`.
    Idle,
    /// Past `absolute_timeout` since the login.
    Absolute,
}

impl Timeout {
    /// The `reason` of the `SessionRevoked` line the provider writes for it.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Timeout::Idle => "idle_timeout",
            Timeout::Absolute => "absolute_timeout",
        }
    }
}

impl Timeouts {
    /// The end of the absolute timeout of a session that starts at `login`.
    pub(super) fn absolute_end(&self, login: UnixMillis) -> UnixMillis {
        login.plus(self.absolute)
    }

    /// What `state` is at `now`.
    pub(super) fn standing(&self, state: &SessionState, now: UnixMillis) -> Standing {
        if now >= state.absolute_end {
            Standing::TimedOut(Timeout::Absolute)
        } else if now >= state.last_seen_at.plus(self.idle) {
            Standing::TimedOut(Timeout::Idle)
        } else if now >= state.last_seen_at.plus(touch_granularity(self.idle)) {
            Standing::DueForTouch
        } else {
            Standing::Live
        }
    }

    /// Whether `state`'s tokens are to be refreshed at `now`: older than `refresh_after`, or
    /// an id_token that is no longer accepted.
    pub(super) fn is_stale(&self, state: &SessionState, now: UnixMillis) -> bool {
        now >= state.refreshed_at.plus(self.refresh_after) || !state.id_token_live(now)
    }
}

/// How stale `last_seen_at` may get before a request writes it: a tenth of the idle timeout,
/// at most a minute, so a busy session is not a write per request.
fn touch_granularity(idle_timeout: Duration) -> Duration {
    (idle_timeout / 10).min(Duration::from_secs(60))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::provider::Grant;

    const SECOND: Duration = Duration::from_secs(1);

    /// A session that logged in at 0 s, was last seen at `seen` s and refreshed at `refreshed`
    /// s, with an id_token that expires at `exp` s and an absolute end at 100 s.
    fn session(seen: i64, refreshed: i64, exp: i64) -> SessionState {
        let payload = serde_json::json!({"sub": "dev", "exp": exp}).to_string();
        let id_token = format!(
            "e30.{}.sig",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        );
        let grant: Grant = serde_json::from_value(serde_json::json!({"id_token": id_token}))
            .expect("a grant reads its identity from the id_token");
        SessionState {
            id: "s".into(),
            grant: Arc::new(grant),
            created_at: UnixMillis(0),
            last_seen_at: UnixMillis(seen * 1000),
            absolute_end: UnixMillis(100_000),
            refreshed_at: UnixMillis(refreshed * 1000),
        }
    }

    fn timeouts(idle_secs: u64) -> Timeouts {
        Timeouts {
            refresh_after: 10 * SECOND,
            idle: Duration::from_secs(idle_secs),
            absolute: 100 * SECOND,
        }
    }

    #[test]
    fn a_session_times_out_when_idle_or_at_its_absolute_end_and_is_touched_coarsely() {
        let at = |secs: i64| UnixMillis(secs * 1000);
        let table = [
            // (idle timeout s, last seen s, now s, standing)
            (30, 0, 1, Standing::Live),
            (30, 0, 3, Standing::DueForTouch),
            (30, 0, 29, Standing::DueForTouch),
            (30, 0, 30, Standing::TimedOut(Timeout::Idle)),
            (900, 0, 59, Standing::Live),
            (900, 0, 60, Standing::DueForTouch),
            (900, 95, 99, Standing::Live),
            (900, 95, 100, Standing::TimedOut(Timeout::Absolute)),
        ];
        for (idle, seen, now, standing) in table {
            let state = session(seen, 0, 1_000);
            assert_eq!(
                timeouts(idle).standing(&state, at(now)),
                standing,
                "idle {idle} s, seen at {seen} s, now {now} s"
            );
        }
    }

    #[test]
    fn tokens_are_stale_past_refresh_after_or_once_the_id_token_expires() {
        let timeouts = timeouts(900);
        let at = |secs: i64| UnixMillis(secs * 1000);
        assert!(!timeouts.is_stale(&session(0, 0, 60), at(9)));
        assert!(timeouts.is_stale(&session(0, 0, 60), at(10)));
        assert!(
            timeouts.is_stale(&session(0, 5, 8), at(8)),
            "expired id_token"
        );
        assert!(!timeouts.is_stale(&session(0, 5, 60), at(14)));
    }

    #[test]
    fn busy_sessions_are_touched_coarsely() {
        assert_eq!(touch_granularity(15 * 60 * SECOND), 60 * SECOND);
        assert_eq!(touch_granularity(3 * SECOND), Duration::from_millis(300));
    }
}
