//! The redeem decision table, branch by branch with a fixed clock, and the effects and answer
//! each decision implies.

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
