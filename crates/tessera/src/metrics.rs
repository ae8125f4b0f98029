//! Prometheus metrics: requests by endpoint and status, latency histograms, refresh outcomes and
//! active sessions (counted from the store at most every [`ACTIVE_SESSIONS_MAX_AGE`], or at the
//! next scrape after this process began or ended one, so every replica reports the truth without
//! scanning the sessions table on every scrape).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tessera_core::clock::UnixMillis;

/// How long a count of active sessions is shown before the store is asked again: scrapes (every
/// 15–60 s, from several Prometheus servers) and anyone polling `/metrics` cost one count per
/// interval, not one table scan each.
pub const ACTIVE_SESSIONS_MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The outcome of one refresh-token redemption, as counted.
#[derive(Clone, Copy, Debug)]
pub enum RefreshOutcome {
    /// Rotated.
    Rotated,
    /// Reused inside the grace period.
    GraceReuse,
    /// Replayed after the grace period.
    Replay,
    /// Refused for another reason.
    Rejected,
}

/// The metrics of one process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    refreshes: Family<OutcomeLabel, Counter>,
    active_sessions: Gauge,
    /// When `active_sessions` was last counted.
    counted_at: Mutex<Option<UnixMillis>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("tessera"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            refreshes: Family::default(),
            active_sessions: Gauge::default(),
            counted_at: Mutex::new(None),
        };
        metrics.register();
        metrics
    }

    /// Makes each metric known to the registry, under its name and help text.
    fn register(&mut self) {
        self.registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            self.requests.clone(),
        );
        self.registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            self.latency.clone(),
        );
        self.registry.register(
            "refresh_token_redemptions",
            "Refresh-token redemptions by outcome: rotated, grace_reuse, replay, rejected",
            self.refreshes.clone(),
        );
        self.registry.register(
            "active_sessions",
            "Sessions neither revoked nor past their absolute end",
            self.active_sessions.clone(),
        );
    }

    /// Whether the count of active sessions is older than [`ACTIVE_SESSIONS_MAX_AGE`] at `now`.
    pub fn active_sessions_stale(&self, now: UnixMillis) -> bool {
        let counted_at = *self
            .counted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counted_at.is_none_or(|at| now >= at.plus(ACTIVE_SESSIONS_MAX_AGE) || now < at)
    }

    /// Marks the count of active sessions stale: this process began or ended a session.
    pub fn sessions_changed(&self) {
        *self
            .counted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Records a fresh count of active sessions, made at `now`.
    pub fn set_active_sessions(&self, active_sessions: u64, now: UnixMillis) {
        self.active_sessions
            .set(i64::try_from(active_sessions).unwrap_or(i64::MAX));
        *self
            .counted_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
    }

    /// Counts one HTTP request.
    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        let endpoint = endpoint.to_owned();
        self.latency
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Counts one redemption.
    pub fn observe_refresh(&self, outcome: RefreshOutcome) {
        let outcome = match outcome {
            RefreshOutcome::Rotated => "rotated",
            RefreshOutcome::GraceReuse => "grace_reuse",
            RefreshOutcome::Replay => "replay",
            RefreshOutcome::Rejected => "rejected",
        };
        self.refreshes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Latency buckets from 100 µs to about 3.3 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_reused_until_it_is_older_than_the_max_age() {
        let metrics = Metrics::new();
        let t = UnixMillis(1_000_000);
        assert!(metrics.active_sessions_stale(t), "never counted");
        metrics.set_active_sessions(3, t);
        assert!(!metrics.active_sessions_stale(t));
        assert!(!metrics.active_sessions_stale(t.plus(Duration::from_secs(9))));
        assert!(metrics.active_sessions_stale(t.plus(ACTIVE_SESSIONS_MAX_AGE)));
        metrics.sessions_changed();
        assert!(
            metrics.active_sessions_stale(t),
            "a session began or ended here"
        );
        metrics.set_active_sessions(3, t);
        assert!(
            metrics.active_sessions_stale(UnixMillis(t.0 - 1)),
            "a clock set back counts again"
        );
        assert!(metrics.render().contains("tessera_active_sessions 3"));
    }
}
