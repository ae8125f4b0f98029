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
//!
//! The store is chosen once, when the proxy starts (`storage`, the one place the two part
//! ways); each keeps its own code (`server`, `cookie_store`); the session cookie's names,
//! chunks and clearings are `cookie`'s, and when a session is refreshed, touched or ended is
//! decided purely by `timeout`. What both stores share stays here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use tessera_core::clock::{Clock, UnixMillis};
use tessera_core::seal::Sealer;
use tessera_store::StoreError;

use self::claim::{Claim, RefreshEnd};
use self::cookie::SessionCookie;
pub(crate) use self::storage::SessionHome;
use self::storage::Storage;
use self::timeout::Standing;
pub(crate) use self::timeout::{Timeout, Timeouts};
use super::cookie::CookieJar;
use super::provider::{Grant, Provider, ProviderError, SignIn};
use crate::app::RequestContext;

mod claim;
mod cookie;
mod cookie_store;
mod server;
mod storage;
mod timeout;

/// Where sessions live and how long.
pub(crate) struct Sessions {
    /// The store `proxy.session.store` chose.
    storage: Storage,
    /// Seals the login states (and, inside the stores, the sessions).
    sealer: Arc<Sealer>,
    /// Cookie names and attributes, for the login-state cookies.
    pub(crate) jar: CookieJar,
    /// The session cookie.
    cookie: SessionCookie,
    timeouts: Timeouts,
    clock: Arc<dyn Clock>,
    /// One refresh at a time per session in this process.
    gates: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// What [`Sessions`] is built from.
pub(crate) struct SessionsParts {
    /// Where sessions live.
    pub(crate) home: SessionHome,
    /// Seals tokens (and whole sessions in the `cookie` store).
    pub(crate) sealer: Sealer,
    /// Cookie names and attributes.
    pub(crate) jar: CookieJar,
    /// Refresh age, idle and absolute timeouts.
    pub(crate) timeouts: Timeouts,
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

    /// The session with the tokens of a refresh at `now` (which is also activity).
    fn refreshed(self, grant: Grant, now: UnixMillis) -> SessionState {
        SessionState {
            grant: Arc::new(grant),
            refreshed_at: now,
            last_seen_at: now,
            ..self
        }
    }

    /// The `Max-Age` of the cookies that carry it at `now`: until its absolute end.
    fn max_age_secs(&self, now: UnixMillis) -> i64 {
        self.absolute_end.millis_since(now) / 1000
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
    /// be revoked at the provider, and the cookies cleared (the next login asks for
    /// credentials).
    TimedOut {
        /// The ended session.
        state: SessionState,
        /// Which timeout ended it.
        timeout: Timeout,
        /// Cookie clearings, and the cookie that makes the next login ask for credentials.
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
        let sealer = Arc::new(parts.sealer);
        let cookie = SessionCookie::new(parts.jar.clone());
        let storage = Storage::new(parts.home, &sealer, &cookie, &parts.clock);
        Sessions {
            storage,
            sealer,
            jar: parts.jar,
            cookie,
            timeouts: parts.timeouts,
            clock: parts.clock,
            gates: Mutex::new(HashMap::new()),
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
        let state = SessionState {
            id: String::new(),
            grant: Arc::new(grant),
            created_at: now,
            last_seen_at: now,
            absolute_end: self.timeouts.absolute_end(now),
            refreshed_at: now,
        };
        self.storage.create(state, request).await
    }

    /// Finds the request's session, checks its timeouts and records the activity.
    pub(crate) async fn lookup(&self, request: &HeaderMap) -> Result<Lookup, SessionError> {
        let now = self.now();
        let Some(mut state) = self.storage.find(request).await? else {
            let set_cookies = self.cookie.clear_carried(request);
            return Ok(Lookup::Missing { set_cookies });
        };
        let set_cookies = match self.timeouts.standing(&state, now) {
            Standing::TimedOut(timeout) => {
                let mut set_cookies = self.forget(&state, request).await?;
                // Ended for want of use: the provider's single sign-on, which only the
                // browser's presence renews, must not bring the person back unasked.
                set_cookies.push(self.ask_for_credentials());
                return Ok(Lookup::TimedOut {
                    state,
                    timeout,
                    set_cookies,
                });
            }
            Standing::DueForTouch => {
                state.last_seen_at = now;
                self.storage.touch(&state).await?;
                self.storage.carry(&state, request)?
            }
            Standing::Live => Vec::new(),
        };
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
        if !self.timeouts.is_stale(&current.state, self.now()) {
            return Ok(current);
        }
        let gate = self.gate(&current.state.id);
        let _one_at_a_time = gate.lock().await;
        match self
            .storage
            .claim_refresh(&current.state, &self.timeouts)
            .await?
        {
            Claim::Ours => self.refresh(current, provider, request, ctx).await,
            Claim::Refreshed(state) => {
                let set_cookies = self.storage.carry(&state, request)?;
                Ok(Current { state, set_cookies })
            }
            Claim::Elsewhere => Ok(current),
            Claim::Ended => Err(SessionError::Ended {
                set_cookies: self.clear_all(request),
            }),
        }
    }

    /// Ends the session (sign-out): deletes it and answers the cookie clearings.
    pub(crate) async fn forget(
        &self,
        state: &SessionState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        self.storage.forget(state).await?;
        Ok(self.clear_all(request))
    }

    /// Clearings for the session cookies (single or chunk) the request carries, and the
    /// single one in any case.
    pub(crate) fn clear_all(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        self.cookie.clear_all(request)
    }

    /// How the next login of the browser that sent `request` may be answered at the provider:
    /// with credentials when its last session timed out or was signed out of.
    pub(crate) fn sign_in(&self, request: &HeaderMap) -> SignIn {
        let name = self.jar.credentials_name();
        match crate::web::cookie::cookie(request, &name) {
            Some(_) => SignIn::Credentials,
            None => SignIn::SingleSignOn,
        }
    }

    /// The `Set-Cookie` that makes this browser's next login ask for credentials. It lasts as
    /// long as a session of this proxy may (12 hours by default, as long as tessera's single
    /// sign-on): long enough to outlive the provider's session it guards against.
    pub(crate) fn ask_for_credentials(&self) -> HeaderValue {
        let max_age = i64::try_from(self.timeouts.absolute.as_secs()).unwrap_or(i64::MAX);
        self.jar.set(&self.jar.credentials_name(), "1", max_age)
    }

    /// The `Set-Cookie` that clears [`Sessions::ask_for_credentials`]'s, once a login asked.
    pub(crate) fn credentials_given(&self) -> HeaderValue {
        self.jar.clear(&self.jar.credentials_name())
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

    /// Presents the refresh token (the claim is this request's) and records the outcome.
    async fn refresh(
        &self,
        current: Current,
        provider: &Provider,
        request: &HeaderMap,
        ctx: &RequestContext,
    ) -> Result<Current, SessionError> {
        let grant = match self.refresh_grant(&current.state, provider, ctx).await {
            Ok(grant) => grant,
            Err(e) => return self.refresh_failed(current, e, request).await,
        };
        let state = current.state.refreshed(grant, self.now());
        self.storage
            .finish_refresh(&state, RefreshEnd::Refreshed)
            .await?;
        let set_cookies = self.storage.carry(&state, request)?;
        Ok(Current { state, set_cookies })
    }

    /// After a failed refresh: a refused grant ends the session; with the provider out of
    /// reach the session stays as it was, its id_token serving while it lasts.
    async fn refresh_failed(
        &self,
        current: Current,
        e: ProviderError,
        request: &HeaderMap,
    ) -> Result<Current, SessionError> {
        if matches!(e, ProviderError::Refused) {
            let state = &current.state;
            self.storage
                .finish_refresh(state, RefreshEnd::Refused)
                .await?;
            let set_cookies = self.clear_all(request);
            return Err(SessionError::Ended { set_cookies });
        }
        let state = &current.state;
        self.storage
            .finish_refresh(state, RefreshEnd::Abandoned)
            .await?;
        if !state.id_token_live(self.now()) {
            return Err(SessionError::Provider(e));
        }
        tracing::warn!(error = %e, "refresh failed; the current id_token still serves");
        Ok(current)
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
}
