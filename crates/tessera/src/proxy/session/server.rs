//! The `server` store: the session in the database and an opaque handle in the cookie; a
//! refresh claimed in the database, so that one request on one replica presents the refresh
//! token; each process answering from memory for at most `READ_CACHE_TTL`.

use super::*;

impl Sessions {
    /// The session whose handle the request carries, from memory or the database.
    pub(super) async fn find_server(
        &self,
        store: &dyn Store,
        request: &HeaderMap,
    ) -> Result<Option<SessionState>, SessionError> {
        let Some(handle) = crate::web::cookie::cookie(request, &self.jar.name) else {
            return Ok(None);
        };
        if !handle.starts_with(HANDLE_PREFIX) || handle.len() > 100 {
            return Ok(None);
        }
        let hash = Secret::from_presented(handle).hash();
        if let Some(state) = self.cached(hash) {
            return Ok(Some(state));
        }
        let Some(row) = store.find_proxy_session(hash).await? else {
            return Ok(None);
        };
        let state = self.state_of_row(&row);
        if let Some(state) = &state {
            self.cache(hash, state);
        }
        Ok(state)
    }

    /// The session as read within the last [`READ_CACHE_TTL`], if it was.
    pub(super) fn cached(&self, hash: TokenHash) -> Option<SessionState> {
        let now = self.now();
        let cache = self
            .read_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (read_at, state) = cache.get(&hash)?;
        (now < read_at.plus(READ_CACHE_TTL)).then(|| state.clone())
    }

    /// Remembers the session's current state (after a read, a touch or a refresh).
    pub(super) fn cache(&self, hash: TokenHash, state: &SessionState) {
        let now = self.now();
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
    pub(super) fn uncache(&self, hash: TokenHash) {
        self.read_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash);
    }

    /// The session a stored row holds; `None` when it does not open (sealed under a key that
    /// is gone): a login is asked for, as for a missing session.
    pub(super) fn state_of_row(&self, row: &ProxySession) -> Option<SessionState> {
        let aad = row_aad(row.handle);
        let sealed = std::str::from_utf8(&row.sealed).ok()?;
        let plain = self.sealer.open(sealed, &aad).ok()?;
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

    pub(super) fn seal_grant(
        &self,
        handle: TokenHash,
        grant: &Grant,
    ) -> Result<Vec<u8>, SessionError> {
        let plain = serde_json::to_vec(grant).map_err(|_| SessionError::Sealing)?;
        self.sealer
            .seal(&plain, &row_aad(handle))
            .map(String::into_bytes)
            .map_err(|_| SessionError::Sealing)
    }

    /// Refreshes under the database claim, or takes the refresh another request made.
    pub(super) async fn refresh_server(
        &self,
        store: &dyn Store,
        current: Current,
        provider: &Provider,
        request: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Current, SessionError> {
        let handle = handle_of(&current.state)?;
        for _ in 0..LEASE_POLLS {
            let Some(row) = store.find_proxy_session(handle).await? else {
                return Err(SessionError::Ended {
                    set_cookies: self.clear_all(request),
                });
            };
            let latest = self.state_of_row(&row).ok_or(SessionError::Sealing)?;
            if latest.refreshed_at != current.state.refreshed_at || !self.is_stale(&latest) {
                // Refreshed meanwhile, by this process or another replica.
                self.cache(handle, &latest);
                return Ok(Current {
                    state: latest,
                    set_cookies: current.set_cookies,
                });
            }
            let now = self.now();
            if store
                .claim_proxy_refresh(handle, row.refreshed_at, now, now.plus(REFRESH_LEASE))
                .await?
            {
                return self
                    .refresh_claimed(store, handle, current, provider, request, ctx)
                    .await;
            }
            // Another replica is refreshing: the old id_token serves while it lasts.
            if current.state.id_token_live(now) {
                return Ok(current);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
        Err(SessionError::Provider(ProviderError::Unavailable(
            "another replica's refresh of this session did not finish".into(),
        )))
    }

    /// Presents the refresh token once the claim is ours, and records the outcome.
    pub(super) async fn refresh_claimed(
        &self,
        store: &dyn Store,
        handle: TokenHash,
        mut current: Current,
        provider: &Provider,
        request: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Current, SessionError> {
        match self.refresh_grant(&current.state, provider, ctx).await {
            Ok(grant) => {
                let now = self.now();
                let sealed = self.seal_grant(handle, &grant)?;
                store
                    .finish_proxy_refresh(
                        handle,
                        ProxyRefreshOutcome::Refreshed {
                            sealed,
                            refreshed_at: now,
                        },
                    )
                    .await?;
                current.state.grant = Arc::new(grant);
                current.state.refreshed_at = now;
                current.state.last_seen_at = now;
                self.cache(handle, &current.state);
                Ok(current)
            }
            Err(ProviderError::Refused) => {
                self.uncache(handle);
                store.delete_proxy_session(handle).await?;
                Err(SessionError::Ended {
                    set_cookies: self.clear_all(request),
                })
            }
            Err(e) => {
                store
                    .finish_proxy_refresh(handle, ProxyRefreshOutcome::Abandoned)
                    .await?;
                self.still_valid(current, e)
            }
        }
    }
}
