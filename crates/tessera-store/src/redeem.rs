//! The redeem transaction's skeleton, shared by the backends (DESIGN.md, "Redeeming a refresh
//! token"): claim → decide → apply. Each backend claims the token and reads it in its own dialect
//! (the conditional update), hands what it found to [`settle`], executes the [`Writes`] core
//! computed in its own SQL, and answers with [`answer`]. The decision and its effects are core's
//! ([`tessera_core::redeem`]), pure and written once.

use tessera_core::clock::UnixMillis;
use tessera_core::redeem::{self, Effects, FirstUse, Lookup, Presenter, TokenRecord, Written};

use crate::model::{RedeemRequest, Redemption, Session};

/// A presented token as the claim, or the read after it, found it.
pub(crate) struct Found {
    /// The token.
    pub record: TokenRecord,
    /// Its session, as it was before the decision.
    pub session: Session,
    /// Its first use, if it had one before this call's claim (none when this call claimed it).
    pub first_use: Option<FirstUse>,
    /// The expiry of the presented successor, if that is stored.
    pub successor_expires_at: Option<UnixMillis>,
}

/// Decides the redemption from what the claim found (`claimed`: whether this call's conditional
/// update took the token) and computes what it writes and answers.
pub(crate) fn settle(request: &RedeemRequest, claimed: bool, found: Option<&Found>) -> Effects {
    let lookup = Lookup::after_claim(
        claimed,
        found.map(|f| (&f.record, f.session.bounds(), f.first_use.as_ref())),
    );
    let presenter = Presenter {
        client_id: &request.client_id,
        ip: &request.ip,
        now: request.now,
    };
    let decision = redeem::decide(lookup, presenter, &request.policy);
    let stored_successor = found.and_then(|f| f.successor_expires_at);
    redeem::effects(decision, lookup, presenter, request.ttl, stored_successor)
}

/// The answer once the writes are done.
pub(crate) fn answer(effects: Effects, written: Written, found: Option<Found>) -> Redemption {
    Redemption {
        decision: redeem::answer(effects.decision, written),
        session: found.map(|f| f.session),
        successor_expires_at: effects.successor_expires_at,
    }
}
