//! The use cases of the provider: everything between a parsed request and a rendered answer.
//! Handlers call one method here; each method calls the store once or twice, the core for the
//! decisions, and writes the audit events.

mod authorize;
mod error;
mod limiter;
mod session;
mod token;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::{Clock, UnixMillis};
use tessera_core::token::{RotationKey, TokenHash};
use tessera_store::Store;
use tokio::sync::Semaphore;

pub use authorize::{AuthRequest, AuthorizeError, LoginFailure};
pub use error::AppError;
pub use token::ClientCredentials;

use crate::audit::Audit;
use crate::config::{Client, Config};
use crate::keys::{self, KeySet};
use crate::metrics::Metrics;
use crate::users::Users;
use limiter::LoginLimiter;

/// Where a request came from, for the audit log and the grace IP check.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// Source IP.
    pub ip: String,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
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
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: RwLock<Arc<KeySet>>,
    rotation_key: RotationKey,
    users: Users,
    limiter: LoginLimiter,
    /// Bounds concurrent argon2 computations (16 ms of CPU each) so a login storm cannot starve
    /// token requests.
    slow_hash_gate: Semaphore,
    /// SHA-256 of client secrets already verified against an argon2 hash, so a confidential
    /// client pays the argon2 cost once per process, not once per refresh.
    verified_secrets: Mutex<HashSet<TokenHash>>,
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
}

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
        } = parts;
        let now = clock.now();
        let key_set = keys::rotate_and_load(store.as_ref(), &config, &audit, now).await?;
        let candidate: [u8; 32] = rand::random();
        let rotation_key = RotationKey::new(
            store
                .secret_or_insert(ROTATION_KEY_SECRET, candidate.to_vec())
                .await?,
        );
        let dummy: [u8; 16] = rand::random();
        let dummy_password_hash = crate::secret::hash_password(&hex::encode(dummy))
            .map_err(|e| AppError::InvalidRequest(format!("cannot hash: {e}")))?;
        let limiter = LoginLimiter::new(config.login_max_failures, config.login_failure_window);
        Ok(App {
            config,
            issuer,
            audit,
            metrics: Metrics::new(),
            store,
            clock,
            keys: RwLock::new(Arc::new(key_set)),
            rotation_key,
            users,
            limiter,
            slow_hash_gate: Semaphore::new(2),
            verified_secrets: Mutex::new(HashSet::new()),
            dummy_password_hash,
        })
    }

    /// The current time.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
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

    /// Whether the store answers.
    pub async fn ready(&self) -> bool {
        self.store.ping().await.is_ok()
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

    fn record(&self, event: &Event, subjects: &Subjects) {
        self.audit.record(self.now(), event, subjects);
    }
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

fn random_secret(prefix: &str) -> tessera_core::token::Secret {
    tessera_core::token::Secret::from_random(prefix, rand::random())
}
