//! The `server` store: the session in the database and an opaque handle in the cookie; a
//! refresh claimed in the database, so that one request on one replica presents the refresh
//! token; each process answering from memory for at most [`READ_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use tessera_core::clock::{Clock, UnixMillis};
use tessera_core::seal::Sealer;
use tessera_core::token::{Secret, TokenHash};
use tessera_store::{ProxyRefreshOutcome, ProxySession, Store};

use super::claim::{Claim, RefreshEnd};
use super::cookie::SessionCookie;
use super::timeout::Timeouts;
use super::{SessionError, SessionState};
use crate::proxy::provider::{Grant, ProviderError};

/// Prefix of the opaque handle in the cookie.
const HANDLE_PREFIX: &str = "tsp1_";
/// Longest cookie value taken for a handle (one is the prefix and 43 characters).
const MAX_HANDLE_LEN: usize = 100;
/// How long a refresh claim holds the session against other replicas: twice the provider's
/// request timeout, so a claim never lapses while its refresh is still under way (a lapsed
/// claim would let a second replica present the same one-time refresh token).
const REFRESH_LEASE: Duration = Duration::from_secs(60);
/// How often a request whose id_token has expired looks whether another replica has finished
/// the refresh it is waiting for, and how many times. This waits for another process, not for
/// the session's time, so it is real time, not the injected clock.
const LEASE_POLL: Duration = Duration::from_millis(100);
const LEASE_POLLS: u32 = 100;
/// How long a process answers a session from memory before reading its row again. Within one
/// process a change (refresh, sign-out, timeout) is seen at once; a sign-out on another
/// replica is seen here within this time, far within the life of the id_token the upstream
/// already holds. Without it every request would read the database.
const READ_CACHE_TTL: Duration = Duration::from_secs(1);
/// Past this many remembered sessions, expired ones are dropped on the next insert.
const READ_CACHE_PRUNE_AT: usize = 10_000;

/// Sessions in the database, handles in the cookie.
pub(super) struct ServerStore {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    cookie: SessionCookie,
    clock: Arc<dyn Clock>,
    /// Sessions read in the last [`READ_CACHE_TTL`], by handle hash, with when they were read.
    read_cache: Mutex<HashMap<TokenHash, (UnixMillis, SessionState)>>,
}

impl ServerStore {
    /// Sessions in `store`, their tokens sealed by `sealer`.
    pub(super) fn new(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        cookie: SessionCookie,
        clock: Arc<dyn Clock>,
    ) -> ServerStore {
        ServerStore {
            store,
            sealer,
            cookie,
            clock,
            read_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Writes a new session's row; answers the cookie with its fresh handle.
    pub(super) async fn create(
        &self,
        state: SessionState,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let handle = Secret::from_random(HANDLE_PREFIX, rand::random());
        let hash = handle.hash();
        self.store
            .create_proxy_session(ProxySession {
                handle: hash,
                created_at: state.created_at,
                last_seen_at: state.last_seen_at,
                absolute_end: state.absolute_end,
                refreshed_at: state.refreshed_at,
                refresh_lease_until: None,
                sealed: self.seal_grant(hash, &state.grant)?,
                session_id: state.grant.local_session.clone(),
            })
            .await?;
        let max_age = state.max_age_secs(self.clock.now());
        Ok(vec![self.cookie.write_single(handle.expose(), max_age)])
    }

    /// The session whose handle the request carries, from memory or the database.
    pub(super) async fn find(
        &self,
        request: &HeaderMap,
    ) -> Result<Option<SessionState>, SessionError> {
        let Some(handle) = self.cookie.single(request) else {
            return Ok(None);
        };
        if !handle.starts_with(HANDLE_PREFIX) || handle.len() > MAX_HANDLE_LEN {
            return Ok(None);
        }
        let hash = Secret::from_presented(handle).hash();
        if let Some(state) = self.cached(hash) {
            return Ok(Some(state));
        }
        let Some(row) = self.store.find_proxy_session(hash).await? else {
            return Ok(None);
        };
        let state = self.state_of_row(&row);
        if let Some(state) = &state {
            self.cache(hash, state);
        }
        Ok(state)
    }

    /// Records the request as the session's last activity.
    pub(super) async fn touch(&self, state: &SessionState) -> Result<(), SessionError> {
        let handle = handle_of(state)?;
        self.store
            .touch_proxy_session(handle, state.last_seen_at)
            .await?;
        self.cache(handle, state);
        Ok(())
    }

    /// Claims the refresh of `current` in the database, or finds that another request made it
    /// meanwhile. While another replica holds the claim, the old id_token serves as long as it
    /// lasts; after that the request waits for the other replica's refresh.
    pub(super) async fn claim_refresh(
        &self,
        current: &SessionState,
        timeouts: &Timeouts,
    ) -> Result<Claim, SessionError> {
        let handle = handle_of(current)?;
        for _ in 0..LEASE_POLLS {
            if let Some(claim) = self.try_claim(handle, current, timeouts).await? {
                return Ok(claim);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
        Err(SessionError::Provider(ProviderError::Unavailable(
            "another replica's refresh of this session did not finish".into(),
        )))
    }

    /// Records how the claimed refresh of `state` ended, which releases the claim.
    pub(super) async fn finish_refresh(
        &self,
        state: &SessionState,
        end: RefreshEnd,
    ) -> Result<(), SessionError> {
        let handle = handle_of(state)?;
        match end {
            RefreshEnd::Refreshed => {
                let outcome = ProxyRefreshOutcome::Refreshed {
                    sealed: self.seal_grant(handle, &state.grant)?,
                    refreshed_at: state.refreshed_at,
                };
                self.store.finish_proxy_refresh(handle, outcome).await?;
                self.cache(handle, state);
            }
            RefreshEnd::Refused => self.forget(state).await?,
            RefreshEnd::Abandoned => {
                let outcome = ProxyRefreshOutcome::Abandoned;
                self.store.finish_proxy_refresh(handle, outcome).await?;
            }
        }
        Ok(())
    }

    /// Deletes the session.
    pub(super) async fn forget(&self, state: &SessionState) -> Result<(), SessionError> {
        let handle = handle_of(state)?;
        self.uncache(handle);
        self.store.delete_proxy_session(handle).await?;
        Ok(())
    }

    /// One attempt at the claim, from the session's row as it is now; `None` while another
    /// replica holds the claim and `current`'s id_token has expired: the request must wait.
    async fn try_claim(
        &self,
        handle: TokenHash,
        current: &SessionState,
        timeouts: &Timeouts,
    ) -> Result<Option<Claim>, SessionError> {
        let Some(row) = self.store.find_proxy_session(handle).await? else {
            return Ok(Some(Claim::Ended));
        };
        let latest = self.state_of_row(&row).ok_or(SessionError::Sealing)?;
        let now = self.clock.now();
        if latest.refreshed_at != current.refreshed_at || !timeouts.is_stale(&latest, now) {
            // Refreshed meanwhile, by this process or another replica.
            self.cache(handle, &latest);
            return Ok(Some(Claim::Refreshed(latest)));
        }
        let lease_until = now.plus(REFRESH_LEASE);
        let claimed = self
            .store
            .claim_proxy_refresh(handle, row.refreshed_at, now, lease_until)
            .await?;
        Ok(if claimed {
            Some(Claim::Ours)
        } else {
            current.id_token_live(now).then_some(Claim::Elsewhere)
        })
    }

    /// The session as read within the last [`READ_CACHE_TTL`], if it was.
    fn cached(&self, hash: TokenHash) -> Option<SessionState> {
        let now = self.clock.now();
        let cache = self
            .read_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (read_at, state) = cache.get(&hash)?;
        (now < read_at.plus(READ_CACHE_TTL)).then(|| state.clone())
    }

    /// Remembers the session's current state (after a read, a touch or a refresh).
    fn cache(&self, hash: TokenHash, state: &SessionState) {
        let now = self.clock.now();
        let mut cache = self
            .read_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= READ_CACHE_PRUNE_AT {
            cache.retain(|_, (read_at, _)| now < read_at.plus(READ_CACHE_TTL));
        }
        cache.insert(hash, (now, state.clone()));
    }

    /// Forgets a session this process remembered (it ended).
    fn uncache(&self, hash: TokenHash) {
        self.read_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash);
    }

    /// The session a stored row holds; `None` when it does not open (sealed under a key that
    /// is gone): a login is asked for, as for a missing session.
    fn state_of_row(&self, row: &ProxySession) -> Option<SessionState> {
        let sealed = std::str::from_utf8(&row.sealed).ok()?;
        let plain = self.sealer.open(sealed, &row_aad(row.handle)).ok()?;
        let grant: Grant = serde_json::from_slice(&plain).ok()?;
        Some(SessionState {
            id: row.handle.to_hex(),
            grant: Arc::new(grant),
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            absolute_end: row.absolute_end,
            refreshed_at: row.refreshed_at,
        })
    }

    /// The tokens of a session, sealed for its row.
    fn seal_grant(&self, handle: TokenHash, grant: &Grant) -> Result<Vec<u8>, SessionError> {
        let plain = serde_json::to_vec(grant).map_err(|_| SessionError::Sealing)?;
        self.sealer
            .seal(&plain, &row_aad(handle))
            .map(String::into_bytes)
            .map_err(|_| SessionError::Sealing)
    }
}

/// The handle hash of a session (its id).
fn handle_of(state: &SessionState) -> Result<TokenHash, SessionError> {
    TokenHash::from_hex(&state.id).ok_or(SessionError::Sealing)
}

/// Binds a sealed row to its handle, so rows cannot be swapped in the database.
fn row_aad(handle: TokenHash) -> Vec<u8> {
    format!("tessera proxy session {}", handle.to_hex()).into_bytes()
}
