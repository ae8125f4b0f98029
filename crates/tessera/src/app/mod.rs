//! The use cases of the provider: everything between a parsed request and a rendered answer.
//! Handlers call one method here; each method calls the store once or twice, the core for the
//! decisions, and writes the audit events.

mod admin;
mod authorize;
mod error;
mod identity;
mod limiter;
mod session;
mod sessions;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
pub(crate) mod testing;
mod token;
mod upstream;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::{Clock, UnixMillis};
use tessera_core::token::RotationKey;
use tessera_store::Store;
use tokio::sync::Semaphore;

pub use admin::{SessionListing, SessionView, UseView, parse_cursor, rfc3339};
pub use authorize::{AuthRequest, AuthorizeError, LoginFailure, LoginOutcome, MAX_USERNAME_LEN};
pub use error::AppError;
pub use session::LogoutHint;
pub use sessions::Actor;
pub use token::ClientCredentials;
pub use upstream::{
    Callback, UPSTREAM_LOGIN_COOKIE, UPSTREAM_LOGIN_TTL, UpstreamFailure, UpstreamSignedIn,
    UpstreamStart,
};

use crate::audit::Audit;
use crate::config::{Client, Config};
use crate::connector::Connectors;
use crate::keys::{self, KeySet};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::users::Users;
use limiter::{CAPACITY, ClosedWindow, LimitKey, Limiter};
use token::VerifiedSecrets;

/// How long `/readyz` waits for the store: well inside the kubelet's default 1 s probe timeout.
pub const READY_BOUND: Duration = Duration::from_millis(500);

/// Where a request came from, for the audit log and the grace IP check.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// Source IP.
    pub ip: String,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// Where the request came from, as the store keeps it for a session's first and last use.
    pub fn origin(&self) -> tessera_store::Origin {
        tessera_store::Origin {
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone().unwrap_or_default(),
        }
    }

    /// The request's origin as audit subjects; the caller adds who and what it concerns.
    pub fn subjects(&self) -> Subjects {
        Subjects {
            // The command line has no address: `null` rather than a made-up one.
            source_ip: (!self.ip.is_empty()).then(|| self.ip.clone()),
            user_agent: self.user_agent.clone(),
            ..Subjects::default()
        }
    }
}

/// The provider's state, shared by every request.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// The issuer URL (no trailing slash).
    pub issuer: String,
    /// The audit log.
    pub audit: Audit,
    /// The metrics.
    pub metrics: Metrics,
    /// How far the process is on its way out (`/readyz` fails once it is draining).
    pub shutdown: Shutdown,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: RwLock<Arc<KeySet>>,
    rotation_key: RotationKey,
    /// The local users, replaced whole when the users file changes (see [`App::replace_users`]).
    users: RwLock<Arc<Users>>,
    /// Where people come from: the users file, directories.
    connectors: Connectors,
    /// Seals upstream refresh tokens and the logins under way at upstream providers.
    upstream_sealer: tessera_core::seal::Sealer,
    /// Failed logins per user name and per client address.
    login_limiter: Limiter,
    /// Wrong client secrets per client id and per client address.
    client_limiter: Limiter,
    /// Bounds concurrent argon2 password checks (16 ms of CPU each) so a login storm cannot
    /// starve token requests.
    password_gate: Arc<Semaphore>,
    /// The same for argon2 client secrets, apart, so that a flood of wrong client secrets
    /// cannot starve logins nor the other way round. One permit: a correct secret is checked
    /// once per process (see `verified_secrets`), so only wrong ones queue here.
    client_secret_gate: Arc<Semaphore>,
    /// Client secrets already verified, each checked with argon2 once per process.
    verified_secrets: VerifiedSecrets,
    /// An argon2id hash of a random password, checked for unknown users so that a login for a
    /// missing user costs what one for a real user does (no user enumeration by timing).
    dummy_password_hash: String,
}

/// What an [`App`] is built from.
pub struct AppParts {
    /// The configuration.
    pub config: Config,
    /// The issuer URL.
    pub issuer: String,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The audit log.
    pub audit: Audit,
    /// The local users.
    pub users: Users,
    /// The connectors built from the configuration.
    pub connectors: Connectors,
}

/// How long an attempt waits for the attempts in flight on its keys before it is refused.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Name of the stored secret from which refresh-token successors are derived.
const ROTATION_KEY_SECRET: &str = "refresh_token_rotation_key";

impl App {
    /// Builds the provider: creates signing keys and the rotation key on first start.
    pub async fn new(parts: AppParts) -> Result<App, AppError> {
        let AppParts {
            config,
            issuer,
            store,
            clock,
            audit,
            users,
            connectors,
        } = parts;
        let key_set = keys::rotate_and_load(store.as_ref(), &config, &audit, clock.now()).await?;
        let rotation_key = rotation_key(store.as_ref()).await?;
        let upstream_sealer = upstream::upstream_sealer(store.as_ref()).await?;
        let dummy_password_hash = dummy_password_hash()?;
        // Client secrets share the login limits, with counters of their own.
        let limiter = |name| {
            Limiter::new(
                name,
                config.login_max_failures,
                config.login_failure_window,
                CAPACITY,
            )
        };
        let (login_limiter, client_limiter) = (limiter("login"), limiter("client_authentication"));
        Ok(App {
            config,
            issuer,
            audit,
            metrics: Metrics::new(),
            shutdown: Shutdown::default(),
            store,
            clock,
            keys: RwLock::new(Arc::new(key_set)),
            rotation_key,
            users: RwLock::new(Arc::new(users)),
            connectors,
            upstream_sealer,
            login_limiter,
            client_limiter,
            password_gate: Arc::new(Semaphore::new(2)),
            client_secret_gate: Arc::new(Semaphore::new(1)),
            verified_secrets: VerifiedSecrets::default(),
            dummy_password_hash,
        })
    }

    /// The current time.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// The local users as the users file last said.
    pub fn users(&self) -> Arc<Users> {
        Arc::clone(
            &self
                .users
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the local users (the users file changed): a person no longer in it fails
    /// their next login, and their sessions end at their next refresh.
    pub fn replace_users(&self, users: Users) {
        *self
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(users);
    }

    /// The keys in use.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Re-reads the signing keys (another replica or `tessera keys rotate` may have added one)
    /// and rotates them when the newest is older than the configured interval.
    pub async fn reload_keys(&self) -> Result<(), AppError> {
        let fresh =
            keys::rotate_and_load(self.store.as_ref(), &self.config, &self.audit, self.now())
                .await?;
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// Whether the store answers within [`READY_BOUND`]: a readiness probe gives up after one
    /// second by default, so a store that hangs must count as down before that, not after the
    /// pool's `connect_timeout`.
    pub async fn ready(&self) -> bool {
        match tokio::time::timeout(READY_BOUND, self.store.ping()).await {
            Ok(Ok(())) => true,
            // The reason goes to the log: the probe's answer says only "unavailable".
            Ok(Err(e)) => {
                tracing::warn!(reason = %e, "not ready");
                false
            }
            Err(_) => {
                let reason = format!("the store did not answer within {READY_BOUND:?}");
                tracing::warn!(%reason, "not ready");
                false
            }
        }
    }

    /// The Prometheus text of the metrics, with active sessions counted at most every
    /// [`crate::metrics::ACTIVE_SESSIONS_MAX_AGE`].
    pub async fn render_metrics(&self) -> Result<String, AppError> {
        let now = self.now();
        if self.metrics.active_sessions_stale(now) {
            let active = self.store.count_active_sessions(now).await?;
            self.metrics.set_active_sessions(active, now);
        }
        Ok(self.metrics.render())
    }

    /// Deletes rows that can never be used again.
    pub async fn sweep(&self) -> Result<u64, AppError> {
        Ok(self.store.sweep(self.now()).await?)
    }

    /// Finds a registered client.
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.config.clients.get(id)
    }

    /// Writes one summary line for each rate-limited window that is over. Called periodically,
    /// so a summary follows the end of its window within one period.
    pub fn close_rate_limit_windows(&self) {
        let now = self.now();
        for limiter in [&self.login_limiter, &self.client_limiter] {
            self.report_closed(limiter, limiter.close_windows(now));
        }
    }

    /// Admits one attempt of `limiter` for `keys`, and writes the summaries of the windows it
    /// closed on the way. An attempt held back only by attempts in flight waits for them to
    /// settle (at most [`BUSY_WAIT`]): they are usually honest logins racing from one address,
    /// and the ones that fail fill the window, so the waiting ones are refused then.
    async fn admit<'a>(
        &self,
        limiter: &'a Limiter,
        keys: Vec<LimitKey>,
    ) -> Result<limiter::Attempt<'a>, limiter::Refusal> {
        let attempt = async {
            loop {
                let settled = limiter.settled();
                let mut settled = std::pin::pin!(settled);
                settled.as_mut().enable();
                let admission = limiter.begin(keys.clone(), self.now());
                self.report_closed(limiter, limiter.take_closed());
                match admission {
                    Err(refusal) if refusal.busy => settled.await,
                    admission => return admission,
                }
            }
        };
        tokio::time::timeout(BUSY_WAIT, attempt)
            .await
            .unwrap_or(Err(limiter::Refusal {
                retry_after: 1,
                first: false,
                busy: true,
            }))
    }

    /// Admits one attempt like [`App::admit`]. A refusal writes `refused` to the audit log
    /// for the first refusal of its window only (the others are summed up when the window
    /// closes), and answers the seconds until a retry may be admitted.
    async fn admit_audited<'a>(
        &self,
        limiter: &'a Limiter,
        keys: Vec<LimitKey>,
        refused: &Event,
        who: &Subjects,
    ) -> Result<limiter::Attempt<'a>, u64> {
        self.admit(limiter, keys).await.map_err(|refusal| {
            if refusal.first {
                self.record(refused, who);
            }
            refusal.retry_after
        })
    }

    /// Writes one `RateLimitEnded` line per closed window of `limiter`.
    fn report_closed(&self, limiter: &Limiter, closed: Vec<ClosedWindow>) {
        for ClosedWindow { key, refused } in closed {
            let mut subjects = Subjects::default();
            match key {
                LimitKey::User(name) => subjects.uid = Some(name.into()),
                LimitKey::Client(id) => subjects.client_id = Some(id.into()),
                LimitKey::Address(address) => subjects.source_ip = Some(address.into()),
            }
            let event = Event::RateLimitEnded {
                limiter: limiter.name().to_owned(),
                refused,
            };
            self.record(&event, &subjects);
        }
    }

    fn record(&self, event: &Event, subjects: &Subjects) {
        // A session begun or ended here shows in the next scrape; other replicas' changes
        // within `ACTIVE_SESSIONS_MAX_AGE`.
        if matches!(
            event,
            Event::TokenIssued { .. }
                | Event::SessionRevoked { .. }
                | Event::RefreshTokenReplayDetected { .. }
        ) {
            self.metrics.sessions_changed();
        }
        self.audit.record(self.now(), event, subjects);
    }
}

/// Runs a slow (argon2) check on the blocking pool while holding a permit of `gate`. The permit
/// moves into the blocking task: a request dropped mid-hash (the client hung up) leaves its hash
/// running and its permit held until the hash ends, so hanging up cannot pile up hashes beyond
/// the gate.
async fn slow_check(gate: &Arc<Semaphore>, check: impl FnOnce() -> bool + Send + 'static) -> bool {
    let Ok(permit) = Arc::clone(gate).acquire_owned().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let ok = check();
        drop(permit);
        ok
    })
    .await
    .unwrap_or(false)
}

/// The key refresh-token successors are derived from: stored once, the same on every replica
/// (the first to start inserts it, the others read it).
async fn rotation_key(store: &dyn Store) -> Result<RotationKey, AppError> {
    let candidate: [u8; 32] = rand::random();
    let stored = store
        .secret_or_insert(ROTATION_KEY_SECRET, candidate.to_vec())
        .await?;
    Ok(RotationKey::new(stored))
}

/// An argon2id hash of a random password, for logins of unknown users to check against.
fn dummy_password_hash() -> Result<String, AppError> {
    let dummy: [u8; 16] = rand::random();
    crate::secret::hash_password(&hex::encode(dummy))
        .map_err(|e| AppError::InvalidRequest(format!("cannot hash: {e}")))
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

fn random_secret(prefix: &str) -> tessera_core::token::Secret {
    tessera_core::token::Secret::from_random(prefix, rand::random())
}
