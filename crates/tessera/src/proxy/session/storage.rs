//! The one place where the two stores of `proxy.session.store` part ways: [`Storage`] is
//! chosen once, when the proxy starts, and every operation that differs between them is
//! dispatched here to [`ServerStore`] or [`CookieStore`]. What they share (timeouts, the
//! refresh's single flight and its provider call) stays in [`Sessions`](super::Sessions).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use tessera_core::clock::Clock;
use tessera_core::seal::Sealer;
use tessera_store::Store;

use super::claim::{Claim, RefreshEnd};
use super::cookie::SessionCookie;
use super::cookie_store::CookieStore;
use super::server::ServerStore;
use super::timeout::Timeouts;
use super::{SessionError, SessionState};

/// Where sessions live (`proxy.session.store`), as the proxy is built with it.
pub(crate) enum SessionHome {
    /// `server`: rows in this database, an opaque handle in the cookie.
    Database(Arc<dyn Store>),
    /// `cookie`: the whole session sealed into the cookie.
    Cookie,
}

/// The store `proxy.session.store` chose.
pub(super) enum Storage {
    /// `server`.
    Server(ServerStore),
    /// `cookie`.
    Cookie(CookieStore),
}

impl Storage {
    /// The store for `home`, sealing with `sealer` into `cookie`.
    pub(super) fn new(
        home: SessionHome,
        sealer: &Arc<Sealer>,
        cookie: &SessionCookie,
        clock: &Arc<dyn Clock>,
    ) -> Storage {
        let (sealer, cookie, clock) = (Arc::clone(sealer), cookie.clone(), Arc::clone(clock));
        match home {
            SessionHome::Database(store) => {
                Storage::Server(ServerStore::new(store, sealer, cookie, clock))
            }
            SessionHome::Cookie => Storage::Cookie(CookieStore::new(sealer, cookie, clock)),
        }
    }

    /// Keeps a new session; answers the cookies that lead to it.
    pub(super) async fn create(
        &self,
        state: SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        match self {
            Storage::Server(server) => server.create(state).await,
            Storage::Cookie(cookie) => cookie.create(state, request),
        }
    }

    /// The session the request's cookie leads to, if any.
    pub(super) async fn find(
        &self,
        request: &HeaderMap,
    ) -> Result<Option<SessionState>, SessionError> {
        match self {
            Storage::Server(server) => server.find(request).await,
            Storage::Cookie(cookie) => Ok(cookie.find(request)),
        }
    }

    /// The cookies that carry `state` after it changed: none for a handle, which stays.
    pub(super) fn carry(
        &self,
        state: &SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        match self {
            Storage::Server(_) => Ok(Vec::new()),
            Storage::Cookie(cookie) => cookie.carry(state, request),
        }
    }

    /// Records `state`'s new `last_seen_at` (the cookie store records it in the cookie).
    pub(super) async fn touch(&self, state: &SessionState) -> Result<(), SessionError> {
        match self {
            Storage::Server(server) => server.touch(state).await,
            Storage::Cookie(_) => Ok(()),
        }
    }

    /// Who refreshes `current`.
    pub(super) async fn claim_refresh(
        &self,
        current: &SessionState,
        timeouts: &Timeouts,
    ) -> Result<Claim, SessionError> {
        match self {
            Storage::Server(server) => server.claim_refresh(current, timeouts).await,
            Storage::Cookie(cookie) => Ok(cookie.claim_refresh(current)),
        }
    }

    /// Records how this request's refresh of `state` ended.
    pub(super) async fn finish_refresh(
        &self,
        state: &SessionState,
        end: RefreshEnd,
    ) -> Result<(), SessionError> {
        match self {
            Storage::Server(server) => server.finish_refresh(state, end).await,
            Storage::Cookie(cookie) => {
                cookie.finish_refresh(state, end);
                Ok(())
            }
        }
    }

    /// Ends the session.
    pub(super) async fn forget(&self, state: &SessionState) -> Result<(), SessionError> {
        match self {
            Storage::Server(server) => server.forget(state).await,
            Storage::Cookie(cookie) => {
                cookie.forget(state);
                Ok(())
            }
        }
    }
}
