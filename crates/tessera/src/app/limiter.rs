//! Login rate limiting: failures only, per user and per IP, in a fixed window. Successful
//! logins never count, so a user is never locked out by their own correct logins.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tessera_core::clock::UnixMillis;

/// Entries kept before stale ones are pruned, bounding memory under a spray of names.
const PRUNE_ABOVE: usize = 10_000;

pub(crate) struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (UnixMillis, u32)>>,
}

impl LoginLimiter {
    pub(crate) fn new(max_failures: u32, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `key` may try again, when it has used up its failures.
    pub(crate) fn retry_after(&self, key: &str, now: UnixMillis) -> Option<u64> {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let &(start, count) = failures.get(key)?;
        let end = start.plus(self.window);
        (count >= self.max_failures && now < end)
            .then(|| u64::try_from(end.millis_since(now).div_euclid(1000) + 1).unwrap_or(1))
    }

    /// Counts one failure for `key`.
    pub(crate) fn record_failure(&self, key: &str, now: UnixMillis) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() > PRUNE_ABOVE {
            let window = self.window;
            failures.retain(|_, (start, _)| now < start.plus(window));
        }
        let entry = failures.entry(key.to_owned()).or_insert((now, 0));
        if now >= entry.0.plus(self.window) {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_after_the_limit_until_the_window_ends() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        let t = UnixMillis(1_000_000);
        assert_eq!(limiter.retry_after("user:dev", t), None);
        limiter.record_failure("user:dev", t);
        assert_eq!(limiter.retry_after("user:dev", t), None);
        limiter.record_failure("user:dev", t);
        assert_eq!(limiter.retry_after("user:dev", t), Some(61));
        assert_eq!(limiter.retry_after("user:other", t), None);
        assert_eq!(
            limiter.retry_after("user:dev", t.plus(Duration::from_secs(60))),
            None
        );
    }
}
