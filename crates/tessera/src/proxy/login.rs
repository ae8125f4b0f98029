//! A login under way, from `/oauth2/start` to `/oauth2/callback`: what it carries (state,
//! nonce, PKCE verifier, callback URL, where to go after), sealed into a cookie of its own so
//! that several tabs can log in at once, at most [`MAX_LOGIN_STATES`] of them per browser; and
//! the callback's check against it.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use tessera_core::clock::UnixMillis;
use tessera_core::seal;
use tessera_core::token::constant_time_eq;

use super::cookie::{self, MAX_LOGIN_STATES};
use super::provider::SignIn;
use super::session::Sessions;

/// How long a login may take between `/oauth2/start` and the callback.
pub(super) const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Most login-state cookies of one request a new login looks at (and may clear).
const MAX_LOGINS_READ: usize = 4 * MAX_LOGIN_STATES;

/// What the login-state cookie carries from `/oauth2/start` to the callback.
#[derive(Serialize, Deserialize)]
pub(super) struct LoginState {
    /// The OAuth `state`; its start names the cookie.
    pub(super) state: String,
    /// The OpenID Connect `nonce` the id_token must carry.
    pub(super) nonce: String,
    /// The PKCE code verifier (RFC 7636).
    pub(super) verifier: String,
    /// The callback URL the provider was given.
    pub(super) redirect_uri: String,
    /// Where the browser goes once logged in.
    pub(super) rd: String,
    /// When the login is too old to finish.
    pub(super) expires_at: UnixMillis,
    /// Whether the provider was asked for credentials; such a login, finished, clears the
    /// browser's demand for them. (Absent from states sealed before it existed.)
    #[serde(default)]
    pub(super) sign_in: SignIn,
}

/// The callback's query.
#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Why a login cannot start or finish.
#[derive(Debug, PartialEq)]
pub(super) enum LoginError {
    /// The callback's `state` is missing or not one the proxy makes.
    MalformedState,
    /// This browser has no open, unexpired login for the `state` (cookies off, or too slow).
    NoLogin,
    /// The login this browser started has another `state`.
    StateMismatch,
    /// The provider answered the login with an `error`.
    Refused(String),
    /// The callback has no `code`.
    NoCode,
    /// The sealed state would not fit in a cookie a browser keeps.
    TooLong,
    /// The state could not be sealed.
    Unsealable,
}

/// A login the callback may finish: its state, the code to exchange, and its cookie.
pub(super) struct Returning<'q> {
    /// The login this browser started.
    pub(super) login: LoginState,
    /// The authorization code to exchange.
    pub(super) code: &'q str,
    /// The name of the login's cookie, cleared once the session starts.
    pub(super) cookie: String,
}

/// The login-state cookies of one browser: written at the start, read at the callback, and
/// kept to at most [`MAX_LOGIN_STATES`].
pub(super) struct LoginCookies<'s> {
    sessions: &'s Sessions,
}

impl LoginCookies<'_> {
    /// The login cookies of `sessions`' jar, sealed with its key.
    pub(super) fn new(sessions: &Sessions) -> LoginCookies<'_> {
        LoginCookies { sessions }
    }

    /// The `Set-Cookie`s that start `login` in a browser that sent `request`: the login's
    /// sealed state, after clearings of the older logins beyond the bound.
    pub(super) fn start(
        &self,
        login: &LoginState,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, LoginError> {
        let jar = &self.sessions.jar;
        let name = jar.csrf_name(&login.state).ok_or(LoginError::Unsealable)?;
        let plain = serde_json::to_vec(login).map_err(|_| LoginError::Unsealable)?;
        let sealed = self
            .sessions
            .seal_for(&name, &plain)
            .map_err(|_| LoginError::Unsealable)?;
        if name.len() + 1 + sealed.len() > seal::MAX_PAIR_LEN {
            // A browser would drop the cookie and the login could never finish.
            return Err(LoginError::TooLong);
        }
        let max_age = i64::try_from(LOGIN_TTL.as_secs()).unwrap_or(600);
        let mut cookies: Vec<HeaderValue> = self
            .older(request)
            .into_iter()
            .map(|name| jar.clear(name))
            .collect();
        cookies.push(jar.set(&name, &sealed, max_age));
        Ok(cookies)
    }

    /// The login a callback finishes: the one its `state` names in this browser's cookies,
    /// checked by [`check`].
    pub(super) fn returning<'q>(
        &self,
        query: &'q CallbackQuery,
        request: &HeaderMap,
    ) -> Result<Returning<'q>, LoginError> {
        let sent_state = query.state.as_deref().unwrap_or_default();
        let cookie = self
            .sessions
            .jar
            .csrf_name(sent_state)
            .ok_or(LoginError::MalformedState)?;
        let login = crate::web::cookie::cookie(request, &cookie)
            .and_then(|sealed| self.open(&cookie, &sealed));
        let (login, code) = check(query, login, self.sessions.now())?;
        Ok(Returning {
            login,
            code,
            cookie,
        })
    }

    /// The login-state cookies to clear as a new login starts, so that with it at most
    /// [`MAX_LOGIN_STATES`] remain: those that do not open first, then the oldest. Only the
    /// first [`MAX_LOGINS_READ`] are looked at: a browser holds no more than the bound.
    fn older<'h>(&self, request: &'h HeaderMap) -> Vec<&'h str> {
        let jar_name = &self.sessions.jar.name;
        let mut seen = HashSet::new();
        let mut logins: Vec<(Option<UnixMillis>, &str)> = crate::web::cookie::cookie_pairs(request)
            .filter(|(name, _)| cookie::is_csrf(jar_name, name) && seen.insert(*name))
            .take(MAX_LOGINS_READ)
            .map(|(name, sealed)| (self.open(name, sealed).map(|l| l.expires_at), name))
            .collect();
        // Stable: logins started within one millisecond keep the request's order, which
        // browsers make oldest first (RFC 6265 §5.4, step 2).
        logins.sort_by_key(|(expiry, _)| *expiry);
        let excess = (logins.len() + 1).saturating_sub(MAX_LOGIN_STATES);
        logins
            .into_iter()
            .take(excess)
            .map(|(_, name)| name)
            .collect()
    }

    /// The login sealed in cookie `name`, if it opens.
    fn open(&self, name: &str, sealed: &str) -> Option<LoginState> {
        let plain = self.sessions.open_for(name, sealed)?;
        serde_json::from_slice(&plain).ok()
    }
}

/// Whether a callback with `query` may finish `login` (the one its `state` names in this
/// browser, if its cookie opened) at `now`; if so, the code to exchange. In order: the login
/// is there and unexpired, its `state` is the one sent back (in constant time), the provider
/// sent no `error`, and there is a `code`.
fn check(
    query: &CallbackQuery,
    login: Option<LoginState>,
    now: UnixMillis,
) -> Result<(LoginState, &str), LoginError> {
    let login = login
        .filter(|login| now < login.expires_at)
        .ok_or(LoginError::NoLogin)?;
    let sent_state = query.state.as_deref().unwrap_or_default();
    if !constant_time_eq(sent_state.as_bytes(), login.state.as_bytes()) {
        return Err(LoginError::StateMismatch);
    }
    if let Some(e) = &query.error {
        return Err(LoginError::Refused(e.clone()));
    }
    let code = query.code.as_deref().ok_or(LoginError::NoCode)?;
    Ok((login, code))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const STATE: &str = "abcdefgh12345678-the-rest-of-the-state";

    fn login(expires_at: i64) -> LoginState {
        LoginState {
            state: STATE.into(),
            nonce: "n".into(),
            verifier: "v".into(),
            redirect_uri: "https://proxy.example/oauth2/callback".into(),
            rd: "/board".into(),
            expires_at: UnixMillis(expires_at),
            sign_in: SignIn::Credentials,
        }
    }

    fn query(state: Option<&str>, code: Option<&str>, error: Option<&str>) -> CallbackQuery {
        CallbackQuery {
            state: state.map(str::to_owned),
            code: code.map(str::to_owned),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_callback_finishes_only_its_own_unexpired_login_with_a_code() {
        let now = UnixMillis(1_000);
        let good = query(Some(STATE), Some("the-code"), None);
        let (returning, code) = check(&good, Some(login(1_001)), now).unwrap();
        assert_eq!((returning.rd.as_str(), code), ("/board", "the-code"));
        let other_state = format!("{STATE}x");
        let refused = Err(LoginError::Refused("access_denied".into()));
        for (query, login, expected) in [
            (&good, None, Err(LoginError::NoLogin)),
            (&good, Some(login(1_000)), Err(LoginError::NoLogin)),
            (
                &query(Some(&other_state), Some("the-code"), None),
                Some(login(1_001)),
                Err(LoginError::StateMismatch),
            ),
            (
                &query(None, Some("the-code"), None),
                Some(login(1_001)),
                Err(LoginError::StateMismatch),
            ),
            (
                &query(Some(STATE), Some("the-code"), Some("access_denied")),
                Some(login(1_001)),
                refused,
            ),
            (
                &query(Some(STATE), None, None),
                Some(login(1_001)),
                Err(LoginError::NoCode),
            ),
        ] {
            assert_eq!(check(query, login, now).map(|(_, code)| code), expected);
        }
    }
}
