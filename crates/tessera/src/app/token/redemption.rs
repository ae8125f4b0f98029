//! What the store's decision on a refresh token means for the answer (DESIGN.md, "Redeeming a
//! refresh token"): the metric it counts as, the audit events it writes, and whether the client
//! gets tokens or `invalid_grant`. A decision table, pure, so each row is tested here; the
//! store has already applied the decision's effects.

use tessera_core::audit::Event;
use tessera_core::redeem::{Decision, REPLAY_REVOCATION, RejectReason};

use crate::metrics::RefreshOutcome;

/// The answer a decision calls for.
#[derive(Debug)]
pub(super) struct Verdict {
    /// How the redemption is counted.
    pub(super) outcome: RefreshOutcome,
    /// The audit events, in the order they are written.
    pub(super) events: Vec<Event>,
    /// `None` to answer tokens (the events follow a successful answer); the log's reason for
    /// `invalid_grant` otherwise (the events are written before the refusal).
    pub(super) refusal: Option<&'static str>,
}

impl Verdict {
    /// The verdict on `decision`.
    pub(super) fn of(decision: Decision) -> Verdict {
        match decision {
            Decision::Rotate => Verdict {
                outcome: RefreshOutcome::Rotated,
                events: vec![Event::TokenRefreshed],
                refusal: None,
            },
            Decision::Grace {
                first_used_ip,
                first_used_ms_ago,
            } => Verdict {
                outcome: RefreshOutcome::GraceReuse,
                events: vec![Event::ExpiredRefreshTokenUsed {
                    first_used_ip,
                    first_used_ms_ago,
                }],
                refusal: None,
            },
            Decision::Replay {
                revoke_session,
                first_used_ip,
                first_used_ms_ago,
            } => replay(revoke_session, first_used_ip, first_used_ms_ago),
            Decision::Reject(reason) => Verdict {
                outcome: RefreshOutcome::Rejected,
                // Only the end of a session is news for the audit log; the other refusals are
                // the client's business and go to the log.
                events: (reason == RejectReason::SessionEnded)
                    .then_some(Event::SessionExpired)
                    .into_iter()
                    .collect(),
                refusal: Some(reason.as_str()),
            },
        }
    }
}

/// A replay is an alert; the revocation, when the policy makes one, is an event of its own.
fn replay(revoke_session: bool, first_used_ip: String, first_used_ms_ago: i64) -> Verdict {
    let mut events = vec![Event::RefreshTokenReplayDetected {
        first_used_ip,
        first_used_ms_ago,
        session_revoked: revoke_session,
    }];
    if revoke_session {
        events.push(Event::SessionRevoked {
            reason: REPLAY_REVOCATION.into(),
        });
    }
    Verdict {
        outcome: RefreshOutcome::Replay,
        events,
        refusal: Some("refresh token replayed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(revoke_session: bool) -> Decision {
        Decision::Replay {
            revoke_session,
            first_used_ip: "192.0.2.7".into(),
            first_used_ms_ago: 1500,
        }
    }

    #[test]
    fn every_decision_has_its_metric_events_and_answer() {
        let detected = |session_revoked| Event::RefreshTokenReplayDetected {
            first_used_ip: "192.0.2.7".into(),
            first_used_ms_ago: 1500,
            session_revoked,
        };
        let replay_revocation = Event::SessionRevoked {
            reason: "replay".into(),
        };
        let grace = Decision::Grace {
            first_used_ip: "192.0.2.7".into(),
            first_used_ms_ago: 300,
        };
        let grace_event = Event::ExpiredRefreshTokenUsed {
            first_used_ip: "192.0.2.7".into(),
            first_used_ms_ago: 300,
        };
        let reject = |reason| Decision::Reject(reason);
        let table: Vec<(Decision, &str, Vec<Event>, Option<&str>)> = vec![
            (
                Decision::Rotate,
                "Rotated",
                vec![Event::TokenRefreshed],
                None,
            ),
            (grace, "GraceReuse", vec![grace_event], None),
            (
                replayed(true),
                "Replay",
                vec![detected(true), replay_revocation],
                Some("refresh token replayed"),
            ),
            (
                replayed(false),
                "Replay",
                vec![detected(false)],
                Some("refresh token replayed"),
            ),
            (
                reject(RejectReason::SessionEnded),
                "Rejected",
                vec![Event::SessionExpired],
                Some("session_ended"),
            ),
            (
                reject(RejectReason::UnknownToken),
                "Rejected",
                vec![],
                Some("unknown_token"),
            ),
            (
                reject(RejectReason::OtherClient),
                "Rejected",
                vec![],
                Some("other_client"),
            ),
            (
                reject(RejectReason::SessionRevoked),
                "Rejected",
                vec![],
                Some("session_revoked"),
            ),
            (
                reject(RejectReason::TokenExpired),
                "Rejected",
                vec![],
                Some("token_expired"),
            ),
        ];
        for (decision, outcome, events, refusal) in table {
            let row = format!("{decision:?}");
            let verdict = Verdict::of(decision);
            assert_eq!(format!("{:?}", verdict.outcome), outcome, "{row}");
            assert_eq!(verdict.events, events, "{row}");
            assert_eq!(verdict.refusal, refusal, "{row}");
        }
    }
}
