//! Property test of [`decide`] against a tiny reference model of one session's token chain.
//!
//! The model plays the store: a redemption claims its token when the token is unused, keeps the
//! claim only when the decision is `Rotate` (then it records the first use and adds the
//! successor), and revokes the session on a revoking `Replay`. Random sequences of redemptions
//! (of the current token, of an old one, two at one instant, by another client), clock advances
//! and revocations run through it while the invariants of DESIGN.md "Redeeming a refresh token"
//! are checked against the model's own record of what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId};
use tessera_core::redeem::{
    Decision, FirstUse, Lookup, OnReplay, Presenter, RedeemPolicy, RejectReason, SessionBounds,
    TokenRecord, decide, successor_expiry,
};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const IPS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];
/// Every duration is a whole number of ticks, so clock advances land exactly on grace, expiry
/// and session ends often enough to catch an off-by-one at those boundaries.
const TICK_MILLIS: u64 = 100;

proptest! {
    #[test]
    fn random_histories_keep_the_redeem_invariants(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut chain = Chain::new(&setup);
        for op in ops {
            chain.apply(&op);
        }
    }
}

/// The server's configuration and the session's lifetime for one history.
#[derive(Clone, Debug)]
struct Setup {
    policy: RedeemPolicy,
    ttl: Duration,
    lifetime: Duration,
}

/// One step of a history.
#[derive(Clone, Debug)]
enum Op {
    /// The rightful client redeems the newest token.
    RedeemCurrent { ip: usize },
    /// The rightful client redeems some token of the chain, often a spent one.
    RedeemOld { which: Index, ip: usize },
    /// Two tools redeem the newest token at the same instant; the store serialises them.
    RaceCurrent { first_ip: usize, second_ip: usize },
    /// Another client presents some token of the chain.
    RedeemAsOtherClient { which: Index },
    /// Time passes.
    Advance { by: Duration },
    /// An administrator or a sign-out revokes the session.
    Revoke,
}

fn setup() -> impl Strategy<Value = Setup> {
    let grace = prop_oneof![Just(0u64), 1u64..10];
    let on_replay = prop_oneof![Just(OnReplay::RevokeSession), Just(OnReplay::Reject)];
    (grace, any::<bool>(), on_replay, 1u64..60, 1u64..200).prop_map(
        |(grace, same_ip, on_replay, ttl, lifetime)| Setup {
            policy: RedeemPolicy {
                grace_period: ticks(grace),
                grace_requires_same_ip: same_ip,
                on_replay,
            },
            ttl: ticks(ttl),
            lifetime: ticks(lifetime),
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let ip = || 0..IPS.len();
    prop_oneof![
        4 => ip().prop_map(|ip| Op::RedeemCurrent { ip }),
        3 => (any::<Index>(), ip()).prop_map(|(which, ip)| Op::RedeemOld { which, ip }),
        2 => (ip(), ip()).prop_map(|(first_ip, second_ip)| Op::RaceCurrent { first_ip, second_ip }),
        1 => any::<Index>().prop_map(|which| Op::RedeemAsOtherClient { which }),
        4 => (0u64..12).prop_map(|n| Op::Advance { by: ticks(n) }),
        1 => Just(Op::Revoke),
    ]
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * TICK_MILLIS)
}

/// One token of the chain and what the model knows about it.
struct Token {
    record: TokenRecord,
    first_use: Option<FirstUse>,
    rotations: u32,
}

/// One session's chain of refresh tokens, kept the way the store keeps it.
struct Chain {
    tokens: Vec<Token>,
    session: SessionBounds,
    policy: RedeemPolicy,
    ttl: Duration,
    now: UnixMillis,
    client: ClientId,
    other_client: ClientId,
}

impl Chain {
    fn new(setup: &Setup) -> Chain {
        let session = SessionBounds {
            revoked_at: None,
            absolute_end: T0.plus(setup.lifetime),
        };
        let client = ClientId::new("kubernetes");
        let first = TokenRecord {
            client_id: client.clone(),
            session_id: SessionId::new("s1"),
            expires_at: successor_expiry(T0, setup.ttl, session),
        };
        Chain {
            tokens: vec![Token {
                record: first,
                first_use: None,
                rotations: 0,
            }],
            session,
            policy: setup.policy,
            ttl: setup.ttl,
            now: T0,
            client,
            other_client: ClientId::new("demo"),
        }
    }

    fn apply(&mut self, op: &Op) {
        let newest = self.tokens.len() - 1;
        match *op {
            Op::RedeemCurrent { ip } => {
                self.redeem(newest, IPS[ip]);
            }
            Op::RedeemOld { which, ip } => {
                self.redeem(which.index(self.tokens.len()), IPS[ip]);
            }
            Op::RaceCurrent {
                first_ip,
                second_ip,
            } => {
                let first = self.redeem(newest, IPS[first_ip]);
                let second = self.redeem(newest, IPS[second_ip]);
                assert!(
                    !(first == Decision::Rotate && second == Decision::Rotate),
                    "two racers both rotated"
                );
            }
            Op::RedeemAsOtherClient { which } => {
                self.redeem_as_other_client(which.index(self.tokens.len()));
            }
            Op::Advance { by } => self.now = self.now.plus(by),
            Op::Revoke => {
                self.session.revoked_at.get_or_insert(self.now);
            }
        }
    }

    /// The rightful client redeems token `index`; checks every invariant on the way.
    fn redeem(&mut self, index: usize, ip: &str) -> Decision {
        let revoked_before = self.session.revoked_at.is_some();
        let decision = self.decide(index, ip, &self.client);
        if revoked_before {
            assert_eq!(
                decision,
                Decision::Reject(RejectReason::SessionRevoked),
                "a revoked session answers nothing else"
            );
        } else if self.now >= self.session.absolute_end {
            assert_eq!(
                decision,
                Decision::Reject(RejectReason::SessionEnded),
                "an ended session answers nothing else"
            );
        }
        self.check(index, ip, &decision);
        self.commit(index, ip, &decision);
        if let Decision::Replay { revoke_session, .. } = decision {
            assert_eq!(
                revoke_session,
                self.policy.on_replay == OnReplay::RevokeSession
            );
            assert_eq!(self.session.revoked_at.is_some(), revoke_session);
        }
        decision
    }

    /// Another client presents token `index`: refused as such, and the chain is untouched.
    fn redeem_as_other_client(&mut self, index: usize) {
        let other = self.other_client.clone();
        let decision = self.decide(index, IPS[0], &other);
        assert_eq!(decision, Decision::Reject(RejectReason::OtherClient));
    }

    /// What `decide` says, given the lookup the store's claim would produce.
    fn decide(&self, index: usize, ip: &str, client: &ClientId) -> Decision {
        let token = &self.tokens[index];
        let lookup = match &token.first_use {
            None => Lookup::Claimed(&token.record, self.session),
            Some(first) => Lookup::AlreadyUsed(&token.record, self.session, first),
        };
        let presenter = Presenter {
            client_id: client,
            ip,
            now: self.now,
        };
        decide(lookup, presenter, &self.policy)
    }

    /// The invariants, judged from the model's state before the decision is applied.
    fn check(&self, index: usize, ip: &str, decision: &Decision) {
        let token = &self.tokens[index];
        match decision {
            Decision::Rotate => {
                assert!(token.first_use.is_none(), "only an unused token rotates");
                assert_eq!(token.rotations, 0, "a token rotates at most once");
                assert_eq!(index, self.tokens.len() - 1, "only the newest is unused");
                assert!(self.now < self.session.absolute_end, "rotate after the end");
                assert!(self.now < token.record.expires_at, "rotate after expiry");
                assert_eq!(self.session.revoked_at, None, "rotate in a revoked session");
            }
            Decision::Grace {
                first_used_ip,
                first_used_ms_ago,
            } => {
                let first = token.first_use.as_ref().expect("grace for an unused token");
                let ago = self.now.millis_since(first.at);
                let grace = i64::try_from(self.policy.grace_period.as_millis()).unwrap();
                assert!(
                    ago < grace,
                    "grace {ago} ms after first use, period {grace} ms"
                );
                assert_eq!(*first_used_ms_ago, ago);
                assert_eq!(first_used_ip, &first.ip);
                if self.policy.grace_requires_same_ip {
                    assert_eq!(first.ip, ip, "grace for another IP");
                }
                assert!(self.now < self.session.absolute_end, "grace after the end");
            }
            Decision::Replay {
                first_used_ms_ago, ..
            } => {
                let first = token.first_use.as_ref().expect("replay of an unused token");
                assert_eq!(*first_used_ms_ago, self.now.millis_since(first.at));
            }
            Decision::Reject(RejectReason::UnknownToken | RejectReason::OtherClient) => {
                panic!("the rightful client's known token was refused as {decision:?}");
            }
            Decision::Reject(_) => {}
        }
    }

    /// Applies `decision` as the store does: only a `Rotate` keeps the claim.
    fn commit(&mut self, index: usize, ip: &str, decision: &Decision) {
        match decision {
            Decision::Rotate => {
                let now = self.now;
                let token = &mut self.tokens[index];
                token.first_use = Some(FirstUse {
                    at: now,
                    ip: ip.to_owned(),
                });
                token.rotations += 1;
                let expires_at = successor_expiry(now, self.ttl, self.session);
                assert!(expires_at <= self.session.absolute_end);
                let successor = TokenRecord {
                    expires_at,
                    ..token.record.clone()
                };
                self.tokens.push(Token {
                    record: successor,
                    first_use: None,
                    rotations: 0,
                });
            }
            Decision::Replay {
                revoke_session: true,
                ..
            } => {
                self.session.revoked_at.get_or_insert(self.now);
            }
            Decision::Grace { .. } | Decision::Replay { .. } | Decision::Reject(_) => {}
        }
    }
}
