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
        self.check_slots(&mut table, &keys, now)?;
        self.take_slots(&mut table, &keys, now)?;
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

    /// Refuses the attempt when any of `keys` has no slot left: as [`Refusal::busy`] when only
    /// attempts in flight hold the slots (one frees in a moment), else as a refusal counted
    /// against the keys that are full.
    fn check_slots(
        &self,
        table: &mut Table,
        keys: &[LimitKey],
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        let blocking: Vec<&LimitKey> = keys
            .iter()
            .filter(|key| slots_used(table.entries.get(*key)) >= self.max_failures)
            .collect();
        if blocking.is_empty() {
            return Ok(());
        }
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
        Err(self.refuse(table, &blocking, now))
    }

    /// Takes a slot of each of `keys`, making room for the keys new to the table.
    fn take_slots(
        &self,
        table: &mut Table,
        keys: &[LimitKey],
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        let new_keys = keys
            .iter()
            .filter(|key| !table.entries.contains_key(*key))
            .count();
        if !self.make_room(table, new_keys, now) {
            // Every key has an attempt in flight: more concurrent attempts than the table
            // holds. Refuse rather than grow.
            return Err(Refusal {
                retry_after: 1,
                first: false,
                busy: false,
            });
        }
        for key in keys {
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
        Ok(())
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
        let victims = self.victims(table, incoming);
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

    /// The keys to evict so that `incoming` new ones fit: at least an eighth of the capacity,
    /// those with the fewest failures and the oldest window first, never a key in flight.
    fn victims(&self, table: &Table, incoming: usize) -> Vec<LimitKey> {
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
        idle[..evict]
            .iter()
            .map(|(_, _, key)| (*key).clone())
            .collect()
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
mod tests;
