//! The `cookie` store: the whole session sealed into the cookie (split into chunks), and the
//! newest state of recently refreshed sessions kept in this process for requests that still
//! carry the cookie from before the refresh.

use super::*;

impl Sessions {
    /// The session sealed in the request's cookies, or the newer state this process holds.
    pub(super) fn find_cookie(&self, request: &HeaderMap) -> Option<SessionState> {
        let pairs: Vec<(&str, &str)> = crate::web::cookie::cookie_pairs(request).collect();
        let sealed = seal::join(&self.jar.name, &pairs, seal::MAX_CHUNKS)?;
        let plain = self.sealer.open(&sealed, self.jar.name.as_bytes()).ok()?;
        let state: SessionState = serde_json::from_slice(&plain).ok()?;
        // A request sent before this process refreshed the session carries the older cookie.
        match self.latest_map().get(&state.id) {
            Some(newer) if newer.refreshed_at > state.refreshed_at => Some(newer.clone()),
            _ => Some(state),
        }
    }

    /// The cookies that carry `state` in the `cookie` store, and clearings for stale chunks.
    pub(super) fn cookie_state(
        &self,
        state: &SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let plain = serde_json::to_vec(state).map_err(|_| SessionError::Sealing)?;
        let sealed = self.seal_for(&self.jar.name, &plain)?;
        let written = seal::split(&self.jar.name, &sealed, seal::MAX_PAIR_LEN);
        if written.len() > seal::MAX_CHUNKS {
            // It could be written but never read back: refuse it rather than loop through login.
            tracing::error!(
                bytes = sealed.len(),
                "the session does not fit in {} cookies; use `proxy.session.store: server`",
                seal::MAX_CHUNKS
            );
            return Err(SessionError::Sealing);
        }
        let present: Vec<&str> = crate::web::cookie::cookie_pairs(request)
            .map(|(name, _)| name)
            .collect();
        let max_age = self.max_age(state);
        let mut cookies: Vec<HeaderValue> = written
            .iter()
            .map(|(name, value)| self.jar.set(name, value, max_age))
            .collect();
        cookies.extend(
            seal::stale(&self.jar.name, &written, &present)
                .iter()
                .filter(|name| !cookie::is_csrf(&self.jar.name, name))
                .take(MAX_CLEARED)
                .map(|name| self.jar.clear(name)),
        );
        Ok(cookies)
    }

    /// Refreshes once per session in this process, or takes the refresh another request made.
    pub(super) async fn refresh_cookie(
        &self,
        current: Current,
        provider: &Provider,
        request: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Current, SessionError> {
        let newer = self.latest_map().get(&current.state.id).cloned();
        if let Some(newer) = newer
            && newer.refreshed_at > current.state.refreshed_at
        {
            let set_cookies = self.cookie_state(&newer, request)?;
            return Ok(Current {
                state: newer,
                set_cookies,
            });
        }
        match self.refresh_grant(&current.state, provider, ctx).await {
            Ok(grant) => {
                let now = self.now();
                let state = SessionState {
                    grant: Arc::new(grant),
                    refreshed_at: now,
                    last_seen_at: now,
                    ..current.state
                };
                self.remember_latest(&state);
                let set_cookies = self.cookie_state(&state, request)?;
                Ok(Current { state, set_cookies })
            }
            Err(ProviderError::Refused) => Err(SessionError::Ended {
                set_cookies: self.clear_all(request),
            }),
            Err(e) => self.still_valid(current, e),
        }
    }

    /// The newest states, locked.
    pub(super) fn latest_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionState>> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a refreshed state for requests still carrying the previous cookie.
    pub(super) fn remember_latest(&self, state: &SessionState) {
        let now = self.now();
        let mut latest = self.latest_map();
        latest.retain(|_, s| now < s.refreshed_at.plus(LATEST_KEPT));
        latest.insert(state.id.clone(), state.clone());
    }
}
