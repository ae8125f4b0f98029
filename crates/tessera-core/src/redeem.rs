//! The redeem decision: what happens when a refresh token is presented (DESIGN.md, "Redeeming a
//! refresh token"). The store performs the one conditional update that says whether this call
//! claimed the token; [`decide`] turns that fact, the session and the policy into one
//! [`Decision`], and [`effects`] computes what that decision writes and answers. Both are pure,
//! so every branch of the table is tested here with a fixed clock, and the property test drives
//! the same functions the backends run; a backend keeps only its dialect: the claim statement
//! and the SQL that executes the [`Writes`].
//!
//! Invariants: at most one call ever sees [`Lookup::Claimed`] for a token (the store's job), so
//! at most one [`Decision::Rotate`] exists per token; a [`Decision::Replay`] with
//! [`OnReplay::RevokeSession`] always revokes the session.

use std::time::Duration;

use crate::clock::UnixMillis;
use crate::id::{ClientId, SessionId};

/// A stored refresh token as the store found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The client the token was issued to.
    pub client_id: ClientId,
    /// The session (family) the token belongs to.
    pub session_id: SessionId,
    /// When the token stops being redeemable.
    pub expires_at: UnixMillis,
}

/// The first redemption of a token: when and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstUse {
    /// When the token was first redeemed.
    pub at: UnixMillis,
    /// The source IP of that first redemption.
    pub ip: String,
}

/// The lifecycle facts of a session that a redemption depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionBounds {
    /// When the session was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
    /// The session's absolute end (login time + `session.max_lifetime`).
    pub absolute_end: UnixMillis,
}

/// What the store's conditional update found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// No token has this hash.
    Unknown,
    /// The token was unused and this call has just claimed it.
    Claimed(&'a TokenRecord, SessionBounds),
    /// The token had been used before this call.
    AlreadyUsed(&'a TokenRecord, SessionBounds, &'a FirstUse),
}

impl<'a> Lookup<'a> {
    /// The lookup after the store's claim: `claimed` says whether this call's conditional update
    /// took the token, `found` is the token, its session and its first use as read after it.
    pub fn after_claim(
        claimed: bool,
        found: Option<(&'a TokenRecord, SessionBounds, Option<&'a FirstUse>)>,
    ) -> Lookup<'a> {
        match found {
            None => Lookup::Unknown,
            Some((record, session, _)) if claimed => Lookup::Claimed(record, session),
            Some((record, session, Some(first))) => Lookup::AlreadyUsed(record, session, first),
            // Unclaimed yet unused: the token did not exist when the claim ran (it has just been
            // stored; under SQLite's single writer this cannot happen at all). Nobody can hold it
            // yet, so it counts as unknown.
            Some((_, _, None)) => Lookup::Unknown,
        }
    }

    /// The token and its session, when there is one.
    fn found(self) -> Option<(&'a TokenRecord, SessionBounds)> {
        match self {
            Lookup::Unknown => None,
            Lookup::Claimed(record, session) | Lookup::AlreadyUsed(record, session, _) => {
                Some((record, session))
            }
        }
    }
}

/// The presenter of a token.
#[derive(Clone, Copy, Debug)]
pub struct Presenter<'a> {
    /// The authenticated client presenting the token.
    pub client_id: &'a ClientId,
    /// The request's source IP.
    pub ip: &'a str,
    /// When the token is presented.
    pub now: UnixMillis,
}

/// What to do when a used token comes back after its grace period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnReplay {
    /// Revoke the whole session (RFC 9700 §4.14.2): the default.
    #[default]
    RevokeSession,
    /// Refuse only the presented token.
    Reject,
}

/// The refresh-token policy of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedeemPolicy {
    /// How long after its first use a token may be presented again with the same answer.
    pub grace_period: Duration,
    /// Whether the grace applies only to the IP that first used the token.
    pub grace_requires_same_ip: bool,
    /// What a replay does.
    pub on_replay: OnReplay,
}

/// Why a token is refused without being a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// No such token.
    UnknownToken,
    /// The token belongs to another client.
    OtherClient,
    /// The session was revoked.
    SessionRevoked,
    /// The session is past its absolute end.
    SessionEnded,
    /// The token is past its own expiry.
    TokenExpired,
}

impl RejectReason {
    /// A short stable name for logs and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownToken => "unknown_token",
            RejectReason::OtherClient => "other_client",
            RejectReason::SessionRevoked => "session_revoked",
            RejectReason::SessionEnded => "session_ended",
            RejectReason::TokenExpired => "token_expired",
        }
    }
}

/// The outcome of one redemption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// First use: store the successor and answer it with fresh tokens.
    Rotate,
    /// Reuse inside the grace period: answer the same successor with a fresh id_token.
    Grace {
        /// The IP that first used the token.
        first_used_ip: String,
        /// How long ago that was.
        first_used_ms_ago: i64,
    },
    /// Reuse after the grace period: refuse, and revoke the session when the policy says so.
    Replay {
        /// Whether the whole session is to be revoked.
        revoke_session: bool,
        /// The IP that first used the token.
        first_used_ip: String,
        /// How long ago that was.
        first_used_ms_ago: i64,
    },
    /// Refused for a reason that is not reuse.
    Reject(RejectReason),
}

/// Decides a redemption; DESIGN.md's five steps, in order.
pub fn decide(lookup: Lookup<'_>, presenter: Presenter<'_>, policy: &RedeemPolicy) -> Decision {
    let Some((record, session)) = lookup.found() else {
        return Decision::Reject(RejectReason::UnknownToken);
    };
    if &record.client_id != presenter.client_id {
        return Decision::Reject(RejectReason::OtherClient);
    }
    if session.revoked_at.is_some() {
        return Decision::Reject(RejectReason::SessionRevoked);
    }
    if presenter.now >= session.absolute_end {
        return Decision::Reject(RejectReason::SessionEnded);
    }
    if presenter.now >= record.expires_at {
        return Decision::Reject(RejectReason::TokenExpired);
    }
    let Lookup::AlreadyUsed(_, _, first) = lookup else {
        return Decision::Rotate;
    };
    let ago = presenter.now.millis_since(first.at);
    if within_grace(ago, first, presenter.ip, policy) {
        Decision::Grace {
            first_used_ip: first.ip.clone(),
            first_used_ms_ago: ago,
        }
    } else {
        Decision::Replay {
            revoke_session: policy.on_replay == OnReplay::RevokeSession,
            first_used_ip: first.ip.clone(),
            first_used_ms_ago: ago,
        }
    }
}

/// When a successor issued at `now` expires: a sliding `ttl`, never past the session's end.
pub fn successor_expiry(now: UnixMillis, ttl: Duration, session: SessionBounds) -> UnixMillis {
    now.plus(ttl).min(session.absolute_end)
}

/// The reason recorded on a session that a replay revokes.
pub const REPLAY_REVOCATION: &str = "replay";

/// A successor to store: it joins its predecessor's session and client. Its hash is the store's
/// to know (derived from the presented token, see DESIGN.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Successor {
    /// The session (family) of the presented token.
    pub session_id: SessionId,
    /// The client of the presented token.
    pub client_id: ClientId,
    /// When it is issued.
    pub issued_at: UnixMillis,
    /// When it expires: [`successor_expiry`].
    pub expires_at: UnixMillis,
}

/// What the store writes for a decision, in the transaction of its claim.
///
/// The claim (the backend's conditional update) has already marked the token used at the
/// presenter's time and IP and named its successor, in one statement; only [`Writes::Rotate`]
/// keeps that claim, every other outcome rolls it back and leaves the token as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Keep the claim and store the successor.
    Rotate {
        /// The first use the claim recorded on the presented token.
        used: FirstUse,
        /// The successor to insert.
        successor: Successor,
    },
    /// Revoke the whole session (the token was used before: there is no claim to keep).
    RevokeSession {
        /// The session to revoke.
        session_id: SessionId,
        /// When.
        at: UnixMillis,
        /// Why: [`REPLAY_REVOCATION`].
        reason: &'static str,
    },
    /// Write nothing: roll the claim back.
    Nothing,
}

/// A decision with everything it implies: what the store writes and what it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effects {
    /// The decision, answered once the writes are done (see [`answer`]).
    pub decision: Decision,
    /// What the store writes.
    pub writes: Writes,
    /// When the successor answered expires: the new one's expiry on a rotation, the stored
    /// one's in a grace (`now` if it is gone); `now` otherwise, where no successor is answered.
    pub successor_expires_at: UnixMillis,
}

/// What the store found when it executed [`Writes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Every write took effect.
    Done,
    /// The revocation found the session already revoked: a concurrent replay revoked it after
    /// this call read it live.
    SessionAlreadyRevoked,
}

/// What `decision` writes and answers, for the token `lookup` found and the successor's stored
/// expiry (`stored_successor`, read with the token; there is one only after a rotation).
pub fn effects(
    decision: Decision,
    lookup: Lookup<'_>,
    presenter: Presenter<'_>,
    ttl: Duration,
    stored_successor: Option<UnixMillis>,
) -> Effects {
    let now = presenter.now;
    let (writes, successor_expires_at) = match (&decision, lookup.found()) {
        (Decision::Rotate, Some((record, session))) => rotation(record, session, presenter, ttl),
        (Decision::Grace { .. }, _) => (Writes::Nothing, stored_successor.unwrap_or(now)),
        (
            Decision::Replay {
                revoke_session: true,
                ..
            },
            Some((record, _)),
        ) => {
            let revoke = Writes::RevokeSession {
                session_id: record.session_id.clone(),
                at: now,
                reason: REPLAY_REVOCATION,
            };
            (revoke, now)
        }
        // Rejections and a replay without revocation change nothing.
        _ => (Writes::Nothing, now),
    };
    Effects {
        decision,
        writes,
        successor_expires_at,
    }
}

/// A rotation's writes, and when its successor expires.
fn rotation(
    record: &TokenRecord,
    session: SessionBounds,
    presenter: Presenter<'_>,
    ttl: Duration,
) -> (Writes, UnixMillis) {
    let successor = Successor {
        session_id: record.session_id.clone(),
        client_id: record.client_id.clone(),
        issued_at: presenter.now,
        expires_at: successor_expiry(presenter.now, ttl, session),
    };
    let expires_at = successor.expires_at;
    let used = FirstUse {
        at: presenter.now,
        ip: presenter.ip.to_owned(),
    };
    (Writes::Rotate { used, successor }, expires_at)
}

/// The decision to answer once the writes are done. A revoking replay whose revocation found
/// the session already revoked answers what it would have in any serial order: the session was
/// revoked (and the revocation is recorded once).
pub fn answer(decision: Decision, written: Written) -> Decision {
    match (decision, written) {
        (Decision::Replay { .. }, Written::SessionAlreadyRevoked) => {
            Decision::Reject(RejectReason::SessionRevoked)
        }
        (decision, _) => decision,
    }
}

fn within_grace(ago_ms: i64, first: &FirstUse, ip: &str, policy: &RedeemPolicy) -> bool {
    let grace_ms = i64::try_from(policy.grace_period.as_millis()).unwrap_or(i64::MAX);
    // A first use that looks slightly in the future is another replica's clock running ahead:
    // it counts as "just now", not as a replay.
    let in_time = grace_ms > 0 && ago_ms < grace_ms;
    in_time && (!policy.grace_requires_same_ip || first.ip == ip)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    fn record() -> TokenRecord {
        TokenRecord {
            client_id: ClientId::new("kubernetes"),
            session_id: SessionId::new("s1"),
            expires_at: NOW.plus(Duration::from_secs(900)),
        }
    }

    fn live() -> SessionBounds {
        SessionBounds {
            revoked_at: None,
            absolute_end: NOW.plus(Duration::from_secs(3600)),
        }
    }

    fn policy(grace_ms: u64, same_ip: bool, on_replay: OnReplay) -> RedeemPolicy {
        RedeemPolicy {
            grace_period: Duration::from_millis(grace_ms),
            grace_requires_same_ip: same_ip,
            on_replay,
        }
    }

    fn by<'a>(client: &'a ClientId, ip: &'a str) -> Presenter<'a> {
        Presenter {
            client_id: client,
            ip,
            now: NOW,
        }
    }

    fn used(ms_ago: i64, ip: &str) -> FirstUse {
        FirstUse {
            at: UnixMillis(NOW.0 - ms_ago),
            ip: ip.to_owned(),
        }
    }

    fn default_policy() -> RedeemPolicy {
        policy(0, false, OnReplay::RevokeSession)
    }

    #[test]
    fn unknown_token_is_rejected() {
        let client = ClientId::new("kubernetes");
        let d = decide(Lookup::Unknown, by(&client, "10.0.0.1"), &default_policy());
        assert_eq!(d, Decision::Reject(RejectReason::UnknownToken));
    }

    #[test]
    fn token_of_another_client_is_rejected_even_when_claimed() {
        let other = ClientId::new("demo");
        let r = record();
        let d = decide(
            Lookup::Claimed(&r, live()),
            by(&other, "ip"),
            &default_policy(),
        );
        assert_eq!(d, Decision::Reject(RejectReason::OtherClient));
    }

    #[test]
    fn token_of_another_client_is_rejected_and_not_a_replay() {
        let other = ClientId::new("demo");
        let (r, first) = (record(), used(10_000, "ip"));
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&other, "ip"),
            &default_policy(),
        );
        assert_eq!(d, Decision::Reject(RejectReason::OtherClient));
    }

    #[test]
    fn revoked_session_rejects_fresh_and_used_tokens() {
        let client = ClientId::new("kubernetes");
        let r = record();
        let revoked = SessionBounds {
            revoked_at: Some(NOW),
            ..live()
        };
        let first = used(1, "ip");
        let grace = policy(60_000, false, OnReplay::RevokeSession);
        for lookup in [
            Lookup::Claimed(&r, revoked),
            Lookup::AlreadyUsed(&r, revoked, &first),
        ] {
            let d = decide(lookup, by(&client, "ip"), &grace);
            assert_eq!(d, Decision::Reject(RejectReason::SessionRevoked));
        }
    }

    #[test]
    fn session_past_its_absolute_end_is_rejected() {
        let client = ClientId::new("kubernetes");
        let r = record();
        let ended = SessionBounds {
            revoked_at: None,
            absolute_end: NOW,
        };
        let d = decide(
            Lookup::Claimed(&r, ended),
            by(&client, "ip"),
            &default_policy(),
        );
        assert_eq!(d, Decision::Reject(RejectReason::SessionEnded));
    }

    #[test]
    fn expired_token_is_rejected_at_its_expiry_instant() {
        let client = ClientId::new("kubernetes");
        let r = TokenRecord {
            expires_at: NOW,
            ..record()
        };
        let d = decide(
            Lookup::Claimed(&r, live()),
            by(&client, "ip"),
            &default_policy(),
        );
        assert_eq!(d, Decision::Reject(RejectReason::TokenExpired));
    }

    #[test]
    fn claimed_live_token_rotates() {
        let client = ClientId::new("kubernetes");
        let r = record();
        let d = decide(
            Lookup::Claimed(&r, live()),
            by(&client, "ip"),
            &default_policy(),
        );
        assert_eq!(d, Decision::Rotate);
    }

    #[test]
    fn reuse_without_grace_is_a_replay_that_revokes_the_session() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(0, "ip"));
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "ip"),
            &default_policy(),
        );
        assert_eq!(
            d,
            Decision::Replay {
                revoke_session: true,
                first_used_ip: "ip".into(),
                first_used_ms_ago: 0
            }
        );
    }

    #[test]
    fn replay_with_reject_policy_keeps_the_session() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(5, "ip"));
        let p = policy(0, false, OnReplay::Reject);
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "ip"),
            &p,
        );
        assert!(matches!(
            d,
            Decision::Replay {
                revoke_session: false,
                ..
            }
        ));
    }

    #[test]
    fn reuse_inside_grace_answers_grace_with_first_use_details() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(4_999, "10.1.1.1"));
        let p = policy(5_000, false, OnReplay::RevokeSession);
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "10.2.2.2"),
            &p,
        );
        assert_eq!(
            d,
            Decision::Grace {
                first_used_ip: "10.1.1.1".into(),
                first_used_ms_ago: 4_999
            }
        );
    }

    #[test]
    fn reuse_at_the_end_of_grace_is_a_replay() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(5_000, "ip"));
        let p = policy(5_000, false, OnReplay::RevokeSession);
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "ip"),
            &p,
        );
        assert!(matches!(
            d,
            Decision::Replay {
                revoke_session: true,
                ..
            }
        ));
    }

    #[test]
    fn grace_requiring_same_ip_refuses_another_ip() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(10, "10.1.1.1"));
        let p = policy(5_000, true, OnReplay::RevokeSession);
        let other = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "10.9.9.9"),
            &p,
        );
        assert!(matches!(other, Decision::Replay { .. }));
        let same = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "10.1.1.1"),
            &p,
        );
        assert!(matches!(same, Decision::Grace { .. }));
    }

    #[test]
    fn first_use_slightly_in_the_future_counts_as_just_now() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(-10, "ip"));
        let grace = policy(5_000, false, OnReplay::RevokeSession);
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "ip"),
            &grace,
        );
        assert!(matches!(d, Decision::Grace { .. }));
        let d = decide(
            Lookup::AlreadyUsed(&r, live(), &first),
            by(&client, "ip"),
            &default_policy(),
        );
        assert!(matches!(d, Decision::Replay { .. }));
    }

    #[test]
    fn successor_never_outlives_its_session() {
        let session = live();
        assert_eq!(
            successor_expiry(NOW, Duration::from_secs(900), session),
            NOW.plus(Duration::from_secs(900))
        );
        assert_eq!(
            successor_expiry(NOW, Duration::from_secs(7200), session),
            session.absolute_end
        );
    }

    #[test]
    fn claimed_token_is_a_claim_and_an_unclaimed_unused_one_is_unknown() {
        let (r, first) = (record(), used(10, "ip"));
        assert_eq!(Lookup::after_claim(true, None), Lookup::Unknown);
        assert_eq!(
            Lookup::after_claim(true, Some((&r, live(), None))),
            Lookup::Claimed(&r, live())
        );
        assert_eq!(
            Lookup::after_claim(false, Some((&r, live(), Some(&first)))),
            Lookup::AlreadyUsed(&r, live(), &first)
        );
        assert_eq!(
            Lookup::after_claim(false, Some((&r, live(), None))),
            Lookup::Unknown
        );
    }

    #[test]
    fn rotation_keeps_the_claim_and_stores_a_successor_in_the_same_session() {
        let client = ClientId::new("kubernetes");
        let r = record();
        let lookup = Lookup::Claimed(&r, live());
        let ttl = Duration::from_secs(7200);
        let e = effects(Decision::Rotate, lookup, by(&client, "10.0.0.1"), ttl, None);
        let successor = Successor {
            session_id: r.session_id.clone(),
            client_id: client,
            issued_at: NOW,
            expires_at: live().absolute_end,
        };
        let used = FirstUse {
            at: NOW,
            ip: "10.0.0.1".into(),
        };
        assert_eq!(e.writes, Writes::Rotate { used, successor });
        assert_eq!(e.successor_expires_at, live().absolute_end);
        assert_eq!(e.decision, Decision::Rotate);
    }

    #[test]
    fn grace_writes_nothing_and_answers_the_stored_successor() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(10, "ip"));
        let lookup = Lookup::AlreadyUsed(&r, live(), &first);
        let grace = Decision::Grace {
            first_used_ip: "ip".into(),
            first_used_ms_ago: 10,
        };
        let stored = UnixMillis(NOW.0 + 5);
        let ttl = Duration::from_secs(900);
        let e = effects(grace.clone(), lookup, by(&client, "ip"), ttl, Some(stored));
        assert_eq!(
            (e.writes, e.successor_expires_at),
            (Writes::Nothing, stored)
        );
        let gone = effects(grace, lookup, by(&client, "ip"), ttl, None);
        assert_eq!(gone.successor_expires_at, NOW);
    }

    #[test]
    fn revoking_replay_revokes_the_tokens_session_and_nothing_else_writes() {
        let client = ClientId::new("kubernetes");
        let (r, first) = (record(), used(10, "ip"));
        let lookup = Lookup::AlreadyUsed(&r, live(), &first);
        let replay = |revoke_session| Decision::Replay {
            revoke_session,
            first_used_ip: "ip".into(),
            first_used_ms_ago: 10,
        };
        let ttl = Duration::from_secs(900);
        let revoking = effects(replay(true), lookup, by(&client, "ip"), ttl, None);
        let revoke = Writes::RevokeSession {
            session_id: r.session_id.clone(),
            at: NOW,
            reason: "replay",
        };
        assert_eq!(revoking.writes, revoke);
        let quiet = [
            replay(false),
            Decision::Reject(RejectReason::TokenExpired),
            Decision::Reject(RejectReason::OtherClient),
        ];
        for decision in quiet {
            let e = effects(decision, lookup, by(&client, "ip"), ttl, None);
            assert_eq!((e.writes, e.successor_expires_at), (Writes::Nothing, NOW));
        }
        let unknown = Decision::Reject(RejectReason::UnknownToken);
        let e = effects(unknown, Lookup::Unknown, by(&client, "ip"), ttl, None);
        assert_eq!(e.writes, Writes::Nothing);
    }

    #[test]
    fn replay_whose_revocation_found_the_session_revoked_answers_session_revoked() {
        let replay = Decision::Replay {
            revoke_session: true,
            first_used_ip: "ip".into(),
            first_used_ms_ago: 10,
        };
        assert_eq!(answer(replay.clone(), Written::Done), replay);
        assert_eq!(
            answer(replay, Written::SessionAlreadyRevoked),
            Decision::Reject(RejectReason::SessionRevoked)
        );
        assert_eq!(answer(Decision::Rotate, Written::Done), Decision::Rotate);
    }
}
