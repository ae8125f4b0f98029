//! The `cookie` store: the whole session sealed into the cookie (split into chunks), and the
//! newest state of recently refreshed sessions kept in this process for requests that still
//! carry the cookie from before the refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use tessera_core::clock::Clock;
use tessera_core::seal::Sealer;

use super::claim::{Claim, RefreshEnd};
use super::cookie::SessionCookie;
use super::{SessionError, SessionState};

/// How long a process remembers a session's newest state for requests that still carry the
/// cookie from before its refresh.
const LATEST_KEPT: Duration = Duration::from_secs(600);

/// Sessions sealed whole into the cookie.
pub(super) struct CookieStore {
    sealer: Arc<Sealer>,
    cookie: SessionCookie,
    clock: Arc<dyn Clock>,
    /// The newest state of each recently refreshed session, by session id.
    latest: Mutex<HashMap<String, SessionState>>,
}

impl CookieStore {
    /// Sessions sealed by `sealer` into `cookie`.
    pub(super) fn new(
        sealer: Arc<Sealer>,
        cookie: SessionCookie,
        clock: Arc<dyn Clock>,
    ) -> CookieStore {
        CookieStore {
            sealer,
            cookie,
            clock,
            latest: Mutex::new(HashMap::new()),
        }
    }

    /// Gives a new session its random id; answers the cookies that carry it.
    pub(super) fn create(
        &self,
        mut state: SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        state.id = hex::encode(rand::random::<[u8; 16]>());
        self.carry(&state, request)
    }

    /// The session sealed in the request's cookies, or the newer state this process holds.
    pub(super) fn find(&self, request: &HeaderMap) -> Option<SessionState> {
        let sealed = self.cookie.joined(request)?;
        let plain = self.sealer.open(&sealed, self.aad()).ok()?;
        let state: SessionState = serde_json::from_slice(&plain).ok()?;
        // A request sent before this process refreshed the session carries the older cookie.
        match self.latest_map().get(&state.id) {
            Some(newer) if newer.refreshed_at > state.refreshed_at => Some(newer.clone()),
            _ => Some(state),
        }
    }

    /// The cookies that carry `state`, and clearings for stale chunks.
    pub(super) fn carry(
        &self,
        state: &SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let plain = serde_json::to_vec(state).map_err(|_| SessionError::Sealing)?;
        let sealed = self
            .sealer
            .seal(&plain, self.aad())
            .map_err(|_| SessionError::Sealing)?;
        let max_age = state.max_age_secs(self.clock.now());
        self.cookie.write_chunked(&sealed, request, max_age)
    }

    /// The refresh of `current` is this request's, unless another request of this process
    /// refreshed it meanwhile: the gate of [`super::Sessions`] lets one at a time through.
    pub(super) fn claim_refresh(&self, current: &SessionState) -> Claim {
        match self.latest_map().get(&current.id) {
            Some(newer) if newer.refreshed_at > current.refreshed_at => {
                Claim::Refreshed(newer.clone())
            }
            _ => Claim::Ours,
        }
    }

    /// Keeps a refreshed state for requests still carrying the previous cookie; a refused or
    /// abandoned refresh leaves nothing to record.
    pub(super) fn finish_refresh(&self, state: &SessionState, end: RefreshEnd) {
        if end != RefreshEnd::Refreshed {
            return;
        }
        let now = self.clock.now();
        let mut latest = self.latest_map();
        latest.retain(|_, s| now < s.refreshed_at.plus(LATEST_KEPT));
        latest.insert(state.id.clone(), state.clone());
    }

    /// Forgets the newest state of an ended session.
    pub(super) fn forget(&self, state: &SessionState) {
        self.latest_map().remove(&state.id);
    }

    /// What a sealed session is bound to: the cookie's name, so it opens under no other.
    fn aad(&self) -> &[u8] {
        self.cookie.name().as_bytes()
    }

    /// The newest states, locked.
    fn latest_map(&self) -> MutexGuard<'_, HashMap<String, SessionState>> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
