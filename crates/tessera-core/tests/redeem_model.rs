//! Property test of [`decide`] and [`effects`] against a tiny reference model of one session's
//! token chain.
//!
//! The model plays the store and runs the code the backends run: a redemption claims its token
//! when the token is unused ([`Lookup::after_claim`]), core decides and computes the writes
//! ([`decide`], [`effects`]), the model executes those writes on its chain (keep the claim and
//! add the successor, revoke the session, or nothing) and answers with [`answer`]. Random
//! sequences of redemptions (of the current token, of an old one, two at one instant, by another
//! client), clock advances and revocations run through it while the invariants of DESIGN.md
//! "Redeeming a refresh token" are checked, decisions and writes alike, against the model's own
//! record of what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId};
use tessera_core::redeem::{
    Decision, Effects, FirstUse, Lookup, OnReplay, Presenter, RedeemPolicy, RejectReason,
    SessionBounds, TokenRecord, Writes, Written, answer, decide, effects, successor_expiry,
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
        let effects = self.settle(index, ip, &self.client);
        if revoked_before {
            assert_eq!(
                effects.decision,
                Decision::Reject(RejectReason::SessionRevoked),
                "a revoked session answers nothing else"
            );
        } else if self.now >= self.session.absolute_end {
            assert_eq!(
                effects.decision,
                Decision::Reject(RejectReason::SessionEnded),
                "an ended session answers nothing else"
            );
        }
        self.check(index, ip, &effects.decision);
        self.check_effects(index, ip, &effects);
        let written = self.commit(index, &effects.writes);
        let decision = answer(effects.decision, written);
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
        let effects = self.settle(index, IPS[0], &other);
        assert_eq!(
            effects.decision,
            Decision::Reject(RejectReason::OtherClient)
        );
        assert_eq!(effects.writes, Writes::Nothing, "another client wrote");
    }

    /// What `decide` and `effects` say, given the lookup the store's claim would produce.
    fn settle(&self, index: usize, ip: &str, client: &ClientId) -> Effects {
        let token = &self.tokens[index];
        let claimed = token.first_use.is_none();
        let found = (&token.record, self.session, token.first_use.as_ref());
        let lookup = Lookup::after_claim(claimed, Some(found));
        let presenter = Presenter {
            client_id: client,
            ip,
            now: self.now,
        };
        let decision = decide(lookup, presenter, &self.policy);
        effects(
            decision,
            lookup,
            presenter,
            self.ttl,
            self.stored_successor(index),
        )
    }

    /// The expiry of token `index`'s successor, as the store reads it with the token: there is
    /// one once the token has rotated.
    fn stored_successor(&self, index: usize) -> Option<UnixMillis> {
        self.tokens.get(index + 1).map(|t| t.record.expires_at)
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

    /// The writes and the answered expiry, judged against the model's own reading of DESIGN.md:
    /// only a rotation keeps the claim and adds a successor, only a revoking replay revokes.
    fn check_effects(&self, index: usize, ip: &str, effects: &Effects) {
        let token = &self.tokens[index];
        match (&effects.decision, &effects.writes) {
            (Decision::Rotate, Writes::Rotate { used, successor }) => {
                let sliding = self.now.plus(self.ttl);
                let expires_at = sliding.min(self.session.absolute_end);
                assert_eq!(used.at, self.now, "first use recorded at another time");
                assert_eq!(used.ip, ip, "first use recorded from another IP");
                assert_eq!(successor.session_id, token.record.session_id);
                assert_eq!(successor.client_id, token.record.client_id);
                assert_eq!(successor.issued_at, self.now);
                assert_eq!(successor.expires_at, expires_at);
                assert_eq!(effects.successor_expires_at, expires_at);
            }
            (Decision::Grace { .. }, Writes::Nothing) => {
                let successor = self.tokens.get(index + 1).expect("grace without successor");
                assert_eq!(effects.successor_expires_at, successor.record.expires_at);
            }
            (
                Decision::Replay {
                    revoke_session: true,
                    ..
                },
                Writes::RevokeSession {
                    session_id,
                    at,
                    reason,
                },
            ) => {
                assert_eq!(session_id, &token.record.session_id);
                assert_eq!((*at, *reason), (self.now, "replay"));
            }
            (
                Decision::Replay {
                    revoke_session: false,
                    ..
                }
                | Decision::Reject(_),
                Writes::Nothing,
            ) => assert_eq!(effects.successor_expires_at, self.now),
            (decision, writes) => panic!("{decision:?} wrote {writes:?}"),
        }
    }

    /// Executes `writes` as the store does: only a rotation keeps the claim.
    fn commit(&mut self, index: usize, writes: &Writes) -> Written {
        match writes {
            Writes::Rotate { used, successor } => {
                let token = &mut self.tokens[index];
                token.first_use = Some(used.clone());
                token.rotations += 1;
                assert!(successor.expires_at <= self.session.absolute_end);
                let successor = TokenRecord {
                    client_id: successor.client_id.clone(),
                    session_id: successor.session_id.clone(),
                    expires_at: successor.expires_at,
                };
                self.tokens.push(Token {
                    record: successor,
                    first_use: None,
                    rotations: 0,
                });
                Written::Done
            }
            Writes::RevokeSession { at, .. } => match self.session.revoked_at {
                Some(_) => Written::SessionAlreadyRevoked,
                None => {
                    self.session.revoked_at = Some(*at);
                    Written::Done
                }
            },
            Writes::Nothing => Written::Done,
        }
    }
}
