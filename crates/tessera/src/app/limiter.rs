//! Failure limits for guessable secrets (login passwords, client secrets), per key (a user name,
//! a client id, a client address) in a fixed window per key.
//!
//! Invariants:
//! - An attempt is counted *before* its secret is checked, under the same lock as the check, for
//!   all its keys at once: failures plus attempts in flight never exceed `max_failures` for any
//!   key, so at most `max_failures` secrets are evaluated per key per window however many
//!   requests race. A success frees its slot without counting (a user is never locked out by
//!   their own correct logins); a failure turns its slot into a failure; an attempt dropped
//!   unsettled (the client hung up mid-hash, and the hash runs on) counts as a failure.
//! - Memory is bounded: keys are bounded (user names are checked before they get here, and are
//!   cut at [`MAX_KEY_LEN`] anyway; IPv6 clients are keyed by their /64, which is what one
//!   subscriber gets), and the table holds at most `capacity` keys. When it is full, windows
//!   that are over go first, then the eighth of the keys with the fewest failures (oldest window
//!   first), never a key with an attempt in flight. A spray of fresh names (one failure each)
//!   therefore evicts other sprayed names, not a victim with more failures: to reset a counter
//!   an attacker has to out-fail it across a whole table, and each spraying address is limited
//!   itself. A victim with a single failure may be evicted, which gives back one guess per
//!   table-full of failures.
//! - An attempt held back only by attempts in flight (their failures alone leave room) is
//!   [`Refusal::busy`]: the caller may wait for [`Limiter::settled`] and try again, so that
//!   honest logins racing from one address queue behind each other instead of being refused.
//! - Refusals are counted per key: the first of a window is reported to the caller (one audit
//!   line), the others only in a [`ClosedWindow`] when the window ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tessera_core::clock::UnixMillis;

/// Longest key text kept, in bytes; longer names are cut (two names that share their first
/// 256 bytes then share a counter, which errs on the side of refusing).
pub(crate) const MAX_KEY_LEN: usize = 256;

/// Keys a limiter holds at most: with keys of at most [`MAX_KEY_LEN`] bytes, a few tens of MB
/// in the worst case, and far more than an honest population fails at once.
pub(crate) const CAPACITY: usize = 65_536;

/// What a counter is kept for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LimitKey {
    /// A user name at the login form.
    User(Box<str>),
    /// A client id at client authentication.
    Client(Box<str>),
    /// A client address: an IPv4 address, or an IPv6 /64.
    Address(Box<str>),
}

impl LimitKey {
    pub(crate) fn user(name: &str) -> LimitKey {
        LimitKey::User(cut(name).into())
    }

    pub(crate) fn client(id: &str) -> LimitKey {
        LimitKey::Client(cut(id).into())
    }

    /// The key of a client address: IPv6 addresses count per /64.
    pub(crate) fn address(ip: &str) -> LimitKey {
        let text = match ip.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V6(v6)) => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
            Ok(v4) => v4.to_string(),
            Err(_) => cut(ip).to_owned(),
        };
        LimitKey::Address(text.into())
    }
}

/// Why an attempt may not go ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Seconds until a retry may be admitted (at least 1).
    pub(crate) retry_after: u64,
    /// Whether this is the first refusal of the window for one of the blocking keys: the one
    /// worth an audit line.
    pub(crate) first: bool,
    /// Held back only by attempts in flight, not by failures: a slot frees when one settles.
    pub(crate) busy: bool,
}

/// A window that refused requests and is over.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClosedWindow {
    /// Whose window it was.
    pub(crate) key: LimitKey,
    /// How many requests it refused.
    pub(crate) refused: u32,
}

/// Counts failures per key and admits attempts while they fit.
pub(crate) struct Limiter {
    /// Its name in audit events: `login` or `client_authentication`.
    name: &'static str,
    max_failures: u32,
    window: Duration,
    capacity: usize,
    table: Mutex<Table>,
    /// Woken whenever an attempt settles, for attempts waiting on a busy key.
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct Table {
    entries: HashMap<LimitKey, Entry>,
    /// Windows closed since the caller last took them.
    closed: Vec<ClosedWindow>,
}

#[derive(Clone, Copy)]
struct Entry {
    start: UnixMillis,
    failures: u32,
    in_flight: u32,
    refused: u32,
}

impl Limiter {
    /// A limiter of `max_failures` per key per `window`, holding at most `capacity` keys.
    pub(crate) fn new(
        name: &'static str,
        max_failures: u32,
        window: Duration,
        capacity: usize,
    ) -> Limiter {
        Limiter {
            name,
            max_failures,
            window,
            capacity,
            table: Mutex::new(Table::default()),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// Its name in audit events.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Resolves at the next settling of an attempt; create it (and `enable` it) before
    /// [`Limiter::begin`], so that a settling in between is not missed.
    pub(crate) fn settled(&self) -> tokio::sync::futures::Notified<'_> {
        self.settled.notified()
    }

    /// Admits one attempt for all of `keys`, or refuses it when any key has no slot left.
    pub(crate) fn begin(
        &self,
        keys: Vec<LimitKey>,
        now: UnixMillis,
    ) -> Result<Attempt<'_>, Refusal> {
        let mut table = self.lock();
        for key in &keys {
            self.renew_if_over(&mut table, key, now);
        }
        let blocking: Vec<&LimitKey> = keys
            .iter()
            .filter(|key| slots_used(table.entries.get(*key)) >= self.max_failures)
            .collect();
        if !blocking.is_empty() {
            let busy = blocking.iter().all(|key| {
                table
                    .entries
                    .get(*key)
                    .is_some_and(|e| e.failures < self.max_failures)
            });
            if busy {
                return Err(Refusal {
                    retry_after: 1,
                    first: false,
                    busy: true,
                });
            }
            return Err(self.refuse(&mut table, &blocking, now));
        }
        let new_keys = keys
            .iter()
            .filter(|key| !table.entries.contains_key(*key))
            .count();
        if !self.make_room(&mut table, new_keys, now) {
            // Every key has an attempt in flight: more concurrent attempts than the table
            // holds. Refuse rather than grow.
            return Err(Refusal {
                retry_after: 1,
                first: false,
                busy: false,
            });
        }
        for key in &keys {
            table
                .entries
                .entry(key.clone())
                .or_insert(Entry {
                    start: now,
                    failures: 0,
                    in_flight: 0,
                    refused: 0,
                })
                .in_flight += 1;
        }
        Ok(Attempt {
            limiter: self,
            keys,
            settled: false,
        })
    }

    /// Ends the windows that are over, and hands back every window closed since the last call
    /// (here or by [`Limiter::begin`] meeting a key whose window was over).
    pub(crate) fn close_windows(&self, now: UnixMillis) -> Vec<ClosedWindow> {
        let mut table = self.lock();
        self.remove_over(&mut table, now);
        std::mem::take(&mut table.closed)
    }

    /// Hands back the windows closed since the last call by attempts meeting a key whose window
    /// was over, or by eviction; cheap, for after each attempt.
    pub(crate) fn take_closed(&self) -> Vec<ClosedWindow> {
        std::mem::take(&mut self.lock().closed)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_over(&self, entry: &Entry, now: UnixMillis) -> bool {
        now >= entry.start.plus(self.window)
    }

    /// Starts a new window for `key` if its window is over (attempts in flight stay counted).
    fn renew_if_over(&self, table: &mut Table, key: &LimitKey, now: UnixMillis) {
        let Some(entry) = table.entries.get_mut(key) else {
            return;
        };
        if !self.is_over(entry, now) {
            return;
        }
        let refused = entry.refused;
        *entry = Entry {
            start: now,
            failures: 0,
            in_flight: entry.in_flight,
            refused: 0,
        };
        if refused > 0 {
            table.closed.push(ClosedWindow {
                key: key.clone(),
                refused,
            });
        }
    }

    fn refuse(&self, table: &mut Table, blocking: &[&LimitKey], now: UnixMillis) -> Refusal {
        let mut refusal = Refusal {
            retry_after: 1,
            first: false,
            busy: false,
        };
        for key in blocking {
            let Some(entry) = table.entries.get_mut(*key) else {
                continue;
            };
            refusal.first |= entry.refused == 0;
            entry.refused = entry.refused.saturating_add(1);
            // Blocked by attempts in flight alone, a retry may fit in a moment.
            if entry.failures >= self.max_failures {
                let end = entry.start.plus(self.window);
                let seconds = end.millis_since(now).div_euclid(1000) + 1;
                refusal.retry_after = refusal.retry_after.max(u64::try_from(seconds).unwrap_or(1));
            }
        }
        refusal
    }

    /// Makes room for `incoming` new keys; false when even eviction cannot.
    fn make_room(&self, table: &mut Table, incoming: usize, now: UnixMillis) -> bool {
        if table.entries.len() + incoming <= self.capacity {
            return true;
        }
        self.remove_over(table, now);
        if table.entries.len() + incoming <= self.capacity {
            return true;
        }
        let mut idle: Vec<(u32, UnixMillis, &LimitKey)> = table
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0)
            .map(|(key, e)| (e.failures, e.start, key))
            .collect();
        let evict = (self.capacity / 8)
            .max(table.entries.len() + incoming - self.capacity)
            .min(idle.len());
        if evict > 0 {
            idle.select_nth_unstable_by_key(evict - 1, |&(failures, start, _)| (failures, start));
        }
        let victims: Vec<LimitKey> = idle[..evict]
            .iter()
            .map(|(_, _, key)| (*key).clone())
            .collect();
        for key in victims {
            if let Some(entry) = table.entries.remove(&key)
                && entry.refused > 0
            {
                table.closed.push(ClosedWindow {
                    key,
                    refused: entry.refused,
                });
            }
        }
        table.entries.len() + incoming <= self.capacity
    }

    /// Drops the keys whose window is over and that have nothing in flight.
    fn remove_over(&self, table: &mut Table, now: UnixMillis) {
        let Table { entries, closed } = table;
        entries.retain(|key, entry| {
            let keep = entry.in_flight > 0 || !self.is_over(entry, now);
            if !keep && entry.refused > 0 {
                closed.push(ClosedWindow {
                    key: key.clone(),
                    refused: entry.refused,
                });
            }
            keep
        });
        // A key in flight whose window is over keeps its failures until its next attempt
        // renews it; its refusals are reported now.
        for (key, entry) in entries.iter_mut() {
            if entry.refused > 0 && now >= entry.start.plus(self.window) {
                closed.push(ClosedWindow {
                    key: key.clone(),
                    refused: entry.refused,
                });
                entry.refused = 0;
            }
        }
    }

    fn settle(&self, keys: &[LimitKey], failed: bool) {
        self.settle_counts(keys, failed);
        self.settled.notify_waiters();
    }

    fn settle_counts(&self, keys: &[LimitKey], failed: bool) {
        let mut table = self.lock();
        for key in keys {
            let Some(entry) = table.entries.get_mut(key) else {
                continue;
            };
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if failed {
                entry.failures = entry.failures.saturating_add(1);
            } else if entry.failures == 0 && entry.in_flight == 0 && entry.refused == 0 {
                // Nothing to remember: honest traffic leaves no trace in the table.
                table.entries.remove(key);
            }
        }
    }
}

/// An admitted attempt holding one slot of each of its keys until it is settled or dropped.
#[must_use = "an attempt counts as a failure unless it is settled as a success"]
pub(crate) struct Attempt<'a> {
    limiter: &'a Limiter,
    keys: Vec<LimitKey>,
    settled: bool,
}

impl Attempt<'_> {
    /// The secret was right: the slots are freed and nothing is counted.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(&self.keys, false);
    }

    /// The secret was wrong: the slots become failures.
    pub(crate) fn failed(mut self) {
        self.settled = true;
        self.limiter.settle(&self.keys, true);
    }
}

impl std::fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt").field("keys", &self.keys).finish()
    }
}

impl Drop for Attempt<'_> {
    /// Dropped unsettled (the request was cancelled while its hash ran): a failure, so hanging
    /// up can never free a slot sooner than a wrong guess would.
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(&self.keys, true);
        }
    }
}

/// Failures plus attempts in flight: the slots of a key that are taken.
fn slots_used(entry: Option<&Entry>) -> u32 {
    entry.map_or(0, |e| e.failures.saturating_add(e.in_flight))
}

/// At most [`MAX_KEY_LEN`] bytes of `text`, cut at a character boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_KEY_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const T: UnixMillis = UnixMillis(1_000_000);

    fn user(name: &str) -> Vec<LimitKey> {
        vec![LimitKey::user(name), LimitKey::address("10.0.0.1")]
    }

    fn fail(limiter: &Limiter, keys: Vec<LimitKey>, now: UnixMillis) {
        limiter.begin(keys, now).unwrap().failed();
    }

    #[test]
    fn failures_block_after_the_limit_until_the_window_ends() {
        let limiter = Limiter::new("test", 2, MINUTE, CAPACITY);
        fail(&limiter, user("dev"), T);
        fail(&limiter, user("dev"), T);
        let refused = limiter.begin(vec![LimitKey::user("dev")], T).unwrap_err();
        assert_eq!(refused.retry_after, 61);
        assert!(limiter.begin(vec![LimitKey::user("other")], T).is_ok());
        assert!(limiter.begin(user("dev"), T.plus(MINUTE)).is_ok());
    }

    #[test]
    fn attempts_in_flight_take_slots_so_racing_guesses_cannot_exceed_the_limit() {
        let limiter = Limiter::new("test", 3, MINUTE, CAPACITY);
        let racing: Vec<Attempt<'_>> = (0..3)
            .map(|_| limiter.begin(user("dev"), T).unwrap())
            .collect();
        let refused = limiter.begin(user("dev"), T).unwrap_err();
        assert_eq!(refused.retry_after, 1, "in-flight attempts end soon");
        assert!(refused.busy, "held back by attempts in flight only");
        assert!(!refused.first, "waiting is no refusal worth an audit line");
        let mut racing = racing.into_iter();
        racing.next().unwrap().succeeded();
        let fourth = limiter
            .begin(user("dev"), T)
            .expect("a success frees its slot");
        racing.for_each(Attempt::failed);
        fourth.failed();
        let refused = limiter.begin(user("dev"), T).unwrap_err();
        assert_eq!(refused.retry_after, 61);
        assert!(!refused.busy, "held back by failures");
    }

    #[tokio::test]
    async fn a_settling_attempt_wakes_those_waiting_on_its_keys() {
        let limiter = Limiter::new("test", 1, MINUTE, CAPACITY);
        let first = limiter.begin(user("dev"), T).unwrap();
        let settled = limiter.settled();
        let mut settled = std::pin::pin!(settled);
        settled.as_mut().enable();
        assert!(limiter.begin(user("dev"), T).unwrap_err().busy);
        first.succeeded();
        settled.await;
        limiter.begin(user("dev"), T).unwrap().succeeded();
    }

    #[test]
    fn a_dropped_attempt_counts_as_a_failure_and_leaks_no_slot() {
        let limiter = Limiter::new("test", 2, MINUTE, CAPACITY);
        drop(limiter.begin(user("dev"), T).unwrap());
        let second = limiter.begin(user("dev"), T).unwrap();
        assert!(
            limiter.begin(user("dev"), T).is_err(),
            "one failure, one in flight"
        );
        second.succeeded();
        let third = limiter.begin(user("dev"), T).unwrap();
        drop(third);
        assert_eq!(limiter.begin(user("dev"), T).unwrap_err().retry_after, 61);
        // After the window the slots are free again: nothing leaked.
        let later = T.plus(MINUTE);
        let both: Vec<_> = (0..2)
            .map(|_| limiter.begin(user("dev"), later).unwrap())
            .collect();
        both.into_iter().for_each(Attempt::succeeded);
    }

    #[test]
    fn successes_leave_no_entry_behind() {
        let limiter = Limiter::new("test", 2, MINUTE, CAPACITY);
        for i in 0..100 {
            limiter
                .begin(user(&format!("u{i}")), T)
                .unwrap()
                .succeeded();
        }
        assert_eq!(limiter.lock().entries.len(), 0);
    }

    #[test]
    fn the_table_stays_bounded_under_a_spray_of_names() {
        let limiter = Limiter::new("test", 5, MINUTE, 64);
        for i in 0..10_000 {
            let keys = vec![
                LimitKey::user(&format!("spray-{i}")),
                LimitKey::address(&format!("10.0.{}.{}", i / 256 % 256, i % 256)),
            ];
            if let Ok(attempt) = limiter.begin(keys, T) {
                attempt.failed();
            }
            assert!(limiter.lock().entries.len() <= 64);
        }
    }

    #[test]
    fn a_spray_of_names_does_not_reset_a_blocked_victim() {
        let limiter = Limiter::new("test", 3, MINUTE, 64);
        for _ in 0..3 {
            fail(&limiter, vec![LimitKey::user("victim")], T);
        }
        for i in 0..10_000 {
            fail(&limiter, vec![LimitKey::user(&format!("spray-{i}"))], T);
        }
        assert!(limiter.begin(vec![LimitKey::user("victim")], T).is_err());
    }

    #[test]
    fn keys_in_flight_are_never_evicted_and_a_full_table_refuses() {
        let limiter = Limiter::new("test", 5, MINUTE, 4);
        let held: Vec<_> = (0..4)
            .map(|i| {
                limiter
                    .begin(vec![LimitKey::user(&format!("u{i}"))], T)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            limiter.begin(vec![LimitKey::user("late")], T).unwrap_err(),
            Refusal {
                retry_after: 1,
                first: false,
                busy: false,
            }
        );
        drop(held);
        assert!(limiter.begin(vec![LimitKey::user("late")], T).is_ok());
    }

    #[test]
    fn the_first_refusal_of_a_window_is_reported_and_the_rest_summarised_when_it_ends() {
        let limiter = Limiter::new("test", 1, MINUTE, CAPACITY);
        fail(&limiter, user("dev"), T);
        let firsts: Vec<bool> = (0..50)
            .map(|_| limiter.begin(user("dev"), T).unwrap_err().first)
            .collect();
        assert!(firsts[0]);
        assert!(firsts[1..].iter().all(|first| !first));
        assert_eq!(limiter.close_windows(T), []);
        let mut closed = limiter.close_windows(T.plus(MINUTE));
        closed.sort_by_key(|c| format!("{:?}", c.key));
        assert_eq!(
            closed,
            [
                ClosedWindow {
                    key: LimitKey::address("10.0.0.1"),
                    refused: 50
                },
                ClosedWindow {
                    key: LimitKey::user("dev"),
                    refused: 50
                },
            ]
        );
        assert_eq!(limiter.close_windows(T.plus(MINUTE)), [], "reported once");
        fail(&limiter, user("dev"), T.plus(MINUTE));
        assert!(
            limiter
                .begin(user("dev"), T.plus(MINUTE))
                .unwrap_err()
                .first,
            "a new window"
        );
    }

    #[test]
    fn a_key_renewed_by_its_next_attempt_reports_its_closed_window() {
        let limiter = Limiter::new("test", 1, MINUTE, CAPACITY);
        fail(&limiter, vec![LimitKey::user("dev")], T);
        assert!(limiter.begin(vec![LimitKey::user("dev")], T).is_err());
        let later = T.plus(MINUTE);
        limiter
            .begin(vec![LimitKey::user("dev")], later)
            .unwrap()
            .succeeded();
        assert_eq!(
            limiter.close_windows(later),
            [ClosedWindow {
                key: LimitKey::user("dev"),
                refused: 1
            }]
        );
    }

    #[test]
    fn keys_are_bounded_and_ipv6_counts_per_slash_64() {
        assert_eq!(
            LimitKey::address("2001:db8:1:2:aaaa::1"),
            LimitKey::address("2001:db8:1:2:bbbb::2")
        );
        assert_eq!(
            LimitKey::address("::ffff:10.0.0.1"),
            LimitKey::address("10.0.0.1")
        );
        assert_ne!(
            LimitKey::address("2001:db8:1:3::1"),
            LimitKey::address("2001:db8:1:2::1")
        );
        let LimitKey::User(long) = LimitKey::user(&"é".repeat(1000)) else {
            unreachable!()
        };
        assert!(long.len() <= MAX_KEY_LEN);
    }
}
