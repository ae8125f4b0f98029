//! Proxy sessions: created at login, found from the request's cookies, kept within their idle
//! and absolute timeouts, refreshed once per session however many requests arrive at once, and
//! ended at sign-out.
//!
//! Two stores (`proxy.session.store`):
//! - `server`: the cookie holds an opaque handle; the session row (tokens sealed with
//!   AES-256-GCM) lives in the database. A refresh is claimed in the database first, so of any
//!   number of requests on any number of replicas exactly one presents the one-time refresh
//!   token; the others keep using the still-valid id_token or wait for the new one.
//! - `cookie`: the whole session is sealed into the cookie (split into `NAME_i` chunks below
//!   4 kB). Concurrent requests of one process share one refresh, and requests that still carry
//!   the previous cookie are answered from the newest state this process holds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use tessera_core::clock::{Clock, UnixMillis};
use tessera_core::seal::{self, Sealer};
use tessera_core::token::{Secret, TokenHash};
use tessera_store::{ProxyRefreshOutcome, ProxySession, Store, StoreError};

use super::cookie::{self, CookieJar};
use super::provider::{Grant, Provider, ProviderError};
use crate::app::RequestContext;

mod cookie_store;
mod server;

/// Prefix of the opaque handle in the `server` store's cookie.
const HANDLE_PREFIX: &str = "tsp1_";
/// How long a refresh claim holds the session against other replicas: twice the provider's
/// request timeout, so a claim never lapses while its refresh is still under way (a lapsed
/// claim would let a second replica present the same one-time refresh token).
const REFRESH_LEASE: Duration = Duration::from_secs(60);
/// How often a request whose id_token has expired looks whether another replica has finished
/// the refresh it is waiting for, and how many times.
const LEASE_POLL: Duration = Duration::from_millis(100);
const LEASE_POLLS: u32 = 100;
/// How long a `server`-store process answers a session from memory before reading its row
/// again. Within one process a change (refresh, sign-out, timeout) is seen at once; a sign-out
/// on another replica is seen here within this time, far within the life of the id_token the
/// upstream already holds. Without it every request would read the database.
const READ_CACHE_TTL: Duration = Duration::from_secs(1);
/// Past this many remembered sessions, expired ones are dropped on the next insert.
const READ_CACHE_PRUNE_AT: usize = 10_000;
/// How long a `cookie`-store process remembers a session's newest state for requests that
/// still carry the cookie from before its refresh.
const LATEST_KEPT: Duration = Duration::from_secs(600);
/// Most session cookies one answer clears. A browser holds at most the chunks the proxy
/// wrote (a few); a request carrying thousands is answered with this many clearings, not
/// thousands, and a browser that somehow holds more loses this many per answer.
const MAX_CLEARED: usize = seal::MAX_CHUNKS + 1;

/// Where sessions live and how long.
pub(crate) struct Sessions {
    /// The database, for the `server` store; `None` for the `cookie` store.
    store: Option<Arc<dyn Store>>,
    sealer: Sealer,
    /// Cookie names and attributes.
    pub(crate) jar: CookieJar,
    /// Refresh the id_token when it is older than this.
    pub(crate) refresh_after: Duration,
    idle_timeout: Duration,
    absolute_timeout: Duration,
    clock: Arc<dyn Clock>,
    /// One refresh at a time per session in this process.
    gates: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// `cookie` store: the newest state of each recently refreshed session.
    latest: Mutex<HashMap<String, SessionState>>,
    /// `server` store: sessions read in the last [`READ_CACHE_TTL`], by handle hash, with when
    /// they were read.
    read_cache: Mutex<HashMap<TokenHash, (UnixMillis, SessionState)>>,
}

/// What [`Sessions`] is built from.
pub(crate) struct SessionsParts {
    /// The database for the `server` store, `None` for the `cookie` store.
    pub(crate) store: Option<Arc<dyn Store>>,
    /// Seals tokens (and whole sessions in the `cookie` store).
    pub(crate) sealer: Sealer,
    /// Cookie names and attributes.
    pub(crate) jar: CookieJar,
    /// Refresh age.
    pub(crate) refresh_after: Duration,
    /// Idle timeout.
    pub(crate) idle_timeout: Duration,
    /// Absolute timeout.
    pub(crate) absolute_timeout: Duration,
    /// The clock.
    pub(crate) clock: Arc<dyn Clock>,
}

/// A session as the proxy uses it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SessionState {
    /// Random id (the `cookie` store's key for single flight; the handle hash for `server`).
    pub(crate) id: String,
    /// The tokens and the user (shared: every request of the session reads it).
    pub(crate) grant: Arc<Grant>,
    /// Login time.
    pub(crate) created_at: UnixMillis,
    /// Last request (coarse).
    pub(crate) last_seen_at: UnixMillis,
    /// End of the absolute timeout.
    pub(crate) absolute_end: UnixMillis,
    /// When the tokens were obtained.
    pub(crate) refreshed_at: UnixMillis,
}

impl SessionState {
    /// Whether its id_token is still accepted at `now` (JWT `exp` is in whole seconds).
    pub(crate) fn id_token_live(&self, now: UnixMillis) -> bool {
        now.as_secs() < self.grant.identity.exp
    }
}

/// A live session and the cookies the answer must set to keep it.
#[derive(Debug)]
pub(crate) struct Current {
    /// The session.
    pub(crate) state: SessionState,
    /// `Set-Cookie` values for the answer.
    pub(crate) set_cookies: Vec<HeaderValue>,
}

/// What the request's cookies lead to.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A live session.
    Live(Current),
    /// No session cookie, or one that does not open, names no session or has more chunks
    /// than a session can have.
    Missing {
        /// Clearings of the unusable session cookies the request carried, if any.
        set_cookies: Vec<HeaderValue>,
    },
    /// A session past its idle or absolute timeout: it is gone now; its refresh token should
    /// be revoked at the provider, and the cookies cleared.
    TimedOut {
        /// The ended session.
        state: SessionState,
        /// Cookie clearings.
        set_cookies: Vec<HeaderValue>,
    },
}

/// Why a session could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The provider refused the refresh: the session is over; log in again.
    #[error("the session has ended")]
    Ended {
        /// Cookie clearings.
        set_cookies: Vec<HeaderValue>,
    },
    /// The database is unavailable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider is unavailable and the id_token has expired.
    #[error(transparent)]
    Provider(ProviderError),
    /// Sealing failed or a stored session does not decode.
    #[error("a session could not be sealed or opened")]
    Sealing,
}

impl Sessions {
    /// Sessions over `parts`.
    pub(crate) fn new(parts: SessionsParts) -> Sessions {
        Sessions {
            store: parts.store,
            sealer: parts.sealer,
            jar: parts.jar,
            refresh_after: parts.refresh_after,
            idle_timeout: parts.idle_timeout,
            absolute_timeout: parts.absolute_timeout,
            clock: parts.clock,
            gates: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            read_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The current time.
    pub(crate) fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Starts a session for a fresh login; answers the cookies to set.
    pub(crate) async fn create(
        &self,
        grant: Grant,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let now = self.now();
        let mut state = SessionState {
            id: String::new(),
            grant: Arc::new(grant),
            created_at: now,
            last_seen_at: now,
            absolute_end: now.plus(self.absolute_timeout),
            refreshed_at: now,
        };
        let Some(store) = &self.store else {
            state.id = hex::encode(rand::random::<[u8; 16]>());
            return self.cookie_state(&state, request);
        };
        let handle = Secret::from_random(HANDLE_PREFIX, rand::random());
        let hash = handle.hash();
        store
            .create_proxy_session(ProxySession {
                handle: hash,
                created_at: now,
                last_seen_at: now,
                absolute_end: state.absolute_end,
                refreshed_at: now,
                refresh_lease_until: None,
                sealed: self.seal_grant(hash, &state.grant)?,
            })
            .await?;
        let max_age = self.max_age(&state);
        Ok(vec![self.jar.set(&self.jar.name, handle.expose(), max_age)])
    }

    /// Finds the request's session, checks its timeouts and records the activity.
    pub(crate) async fn lookup(&self, request: &HeaderMap) -> Result<Lookup, SessionError> {
        let now = self.now();
        let found = match &self.store {
            Some(store) => self.find_server(store.as_ref(), request).await?,
            None => self.find_cookie(request),
        };
        let Some(mut state) = found else {
            let carried = crate::web::cookie::cookie_pairs(request)
                .any(|(name, _)| self.jar.is_ours(name) && !cookie::is_csrf(&self.jar.name, name));
            let set_cookies = if carried {
                self.clear_all(request)
            } else {
                Vec::new()
            };
            return Ok(Lookup::Missing { set_cookies });
        };
        let idle_end = state.last_seen_at.plus(self.idle_timeout);
        if now >= state.absolute_end || now >= idle_end {
            let set_cookies = self.forget(&state, request).await?;
            return Ok(Lookup::TimedOut { state, set_cookies });
        }
        let mut set_cookies = Vec::new();
        if now
            >= state
                .last_seen_at
                .plus(touch_granularity(self.idle_timeout))
        {
            state.last_seen_at = now;
            match &self.store {
                Some(store) => {
                    let handle = handle_of(&state)?;
                    store.touch_proxy_session(handle, now).await?;
                    self.cache(handle, &state);
                }
                None => set_cookies = self.cookie_state(&state, request)?,
            }
        }
        Ok(Lookup::Live(Current { state, set_cookies }))
    }

    /// Makes sure the session's id_token is younger than `refresh_after`, refreshing it once
    /// for every concurrent request of this session.
    pub(crate) async fn fresh(
        &self,
        current: Current,
        provider: &Provider,
        request: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Current, SessionError> {
        if !self.is_stale(&current.state) {
            return Ok(current);
        }
        let gate = self.gate(&current.state.id);
        let _one_at_a_time = gate.lock().await;
        match &self.store {
            Some(store) => {
                self.refresh_server(store.as_ref(), current, provider, request, ctx)
                    .await
            }
            None => self.refresh_cookie(current, provider, request, ctx).await,
        }
    }

    /// Ends the session (sign-out): deletes it and answers the cookie clearings.
    pub(crate) async fn forget(
        &self,
        state: &SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        if let Some(store) = &self.store {
            let handle = handle_of(state)?;
            self.uncache(handle);
            store.delete_proxy_session(handle).await?;
        } else {
            self.latest_map().remove(&state.id);
        }
        Ok(self.clear_all(request))
    }

    /// Clearings for the session cookies (single or chunk) the request carries, at most
    /// [`MAX_CLEARED`], and the single one in any case.
    pub(crate) fn clear_all(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        let mut seen = HashSet::from([self.jar.name.as_str()]);
        let chunks = crate::web::cookie::cookie_pairs(request)
            .map(|(name, _)| name)
            .filter(|name| self.jar.is_ours(name) && !cookie::is_csrf(&self.jar.name, name))
            .filter(|name| seen.insert(name))
            .take(MAX_CLEARED - 1);
        std::iter::once(self.jar.name.as_str())
            .chain(chunks)
            .map(|n| self.jar.clear(n))
            .collect()
    }

    /// Seals a short-lived value (the login state) for cookie `name`.
    pub(crate) fn seal_for(&self, name: &str, plain: &[u8]) -> Result<String, SessionError> {
        self.sealer
            .seal(plain, name.as_bytes())
            .map_err(|_| SessionError::Sealing)
    }

    /// Opens a value sealed with [`Sessions::seal_for`].
    pub(crate) fn open_for(&self, name: &str, sealed: &str) -> Option<Vec<u8>> {
        self.sealer.open(sealed, name.as_bytes()).ok()
    }

    fn is_stale(&self, state: &SessionState) -> bool {
        let now = self.now();
        now >= state.refreshed_at.plus(self.refresh_after) || !state.id_token_live(now)
    }

    async fn refresh_grant(
        &self,
        state: &SessionState,
        provider: &Provider,
        ctx: &RequestContext,
    ) -> Result<Grant, ProviderError> {
        let Some(refresh_token) = &state.grant.refresh_token else {
            // Without a refresh token the session lasts as long as its id_token.
            return Err(if state.id_token_live(self.now()) {
                ProviderError::Unavailable("the provider issued no refresh token".into())
            } else {
                ProviderError::Refused
            });
        };
        let mut grant = provider
            .refresh(refresh_token, &state.grant.identity.sub, ctx)
            .await?;
        // A provider may keep the refresh token unchanged and send none (RFC 6749 §6).
        if grant.refresh_token.is_none() {
            grant.refresh_token = Some(refresh_token.clone());
        }
        Ok(grant)
    }

    /// After a failed refresh: the old id_token while it lasts, else the failure.
    fn still_valid(&self, current: Current, e: ProviderError) -> Result<Current, SessionError> {
        if current.state.id_token_live(self.now()) {
            tracing::warn!(error = %e, "refresh failed; the current id_token still serves");
            Ok(current)
        } else {
            Err(SessionError::Provider(e))
        }
    }

    fn gate(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get(id).and_then(Weak::upgrade) {
            return gate;
        }
        gates.retain(|_, gate| gate.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(id.to_owned(), Arc::downgrade(&gate));
        gate
    }

    fn max_age(&self, state: &SessionState) -> i64 {
        state.absolute_end.millis_since(self.now()) / 1000
    }
}

/// How stale `last_seen_at` may get before a request writes it: a tenth of the idle timeout,
/// at most a minute, so a busy session is not a write per request.
fn touch_granularity(idle_timeout: Duration) -> Duration {
    (idle_timeout / 10).min(Duration::from_secs(60))
}

/// The handle hash of a `server`-store session (its id).
fn handle_of(state: &SessionState) -> Result<TokenHash, SessionError> {
    TokenHash::from_hex(&state.id).ok_or(SessionError::Sealing)
}

/// Binds a sealed row to its handle, so rows cannot be swapped in the database.
fn row_aad(handle: TokenHash) -> Vec<u8> {
    format!("tessera proxy session {}", handle.to_hex()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_sessions_are_touched_coarsely() {
        assert_eq!(
            touch_granularity(Duration::from_secs(15 * 60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            touch_granularity(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
    }
}
