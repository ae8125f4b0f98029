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
mod tests;
