//! The session cookie: `NAME` (or its chunks `NAME_0`, `NAME_1`, …) read from a request and
//! written to an answer with the jar's attributes, and cleared. The `server` store keeps an
//! opaque handle in it, the `cookie` store the whole sealed session; what the value means is
//! theirs, its names, chunks and clearings are this type's.

use std::collections::HashSet;

use axum::http::{HeaderMap, HeaderValue};
use tessera_core::seal;

use super::SessionError;
use crate::proxy::cookie::{self, CookieJar};

/// Most session cookies one answer clears. A browser holds at most the chunks the proxy
/// wrote (a few); a request carrying thousands is answered with this many clearings, not
/// thousands, and a browser that somehow holds more loses this many per answer.
const MAX_CLEARED: usize = seal::MAX_CHUNKS + 1;

/// The session cookie of one jar.
#[derive(Clone, Debug)]
pub(crate) struct SessionCookie {
    jar: CookieJar,
}

impl SessionCookie {
    /// The session cookie named and written as `jar` says.
    pub(crate) fn new(jar: CookieJar) -> SessionCookie {
        SessionCookie { jar }
    }

    /// The cookie's name (`NAME`; chunks are `NAME_0`, …).
    pub(super) fn name(&self) -> &str {
        &self.jar.name
    }

    /// The value of the single cookie `NAME`, if the request carries it.
    pub(super) fn single(&self, request: &HeaderMap) -> Option<String> {
        crate::web::cookie::cookie(request, &self.jar.name)
    }

    /// The value written by [`SessionCookie::write_chunked`], joined from the request's
    /// cookies; `None` when absent, incomplete, or in more chunks than a session can have.
    pub(super) fn joined(&self, request: &HeaderMap) -> Option<String> {
        let pairs: Vec<(&str, &str)> = crate::web::cookie::cookie_pairs(request).collect();
        seal::join(&self.jar.name, &pairs, seal::MAX_CHUNKS)
    }

    /// A `Set-Cookie` of `value` as the single cookie, living `max_age_secs`.
    pub(super) fn write_single(&self, value: &str, max_age_secs: i64) -> HeaderValue {
        self.jar.set(&self.jar.name, value, max_age_secs)
    }

    /// `Set-Cookie`s of `value` in as many chunks as it takes below 4 kB each, living
    /// `max_age_secs`, and clearings of the request's chunks they do not overwrite. A value
    /// that needs more chunks than are read back is refused rather than written: the browser
    /// would loop through login.
    pub(super) fn write_chunked(
        &self,
        value: &str,
        request: &HeaderMap,
        max_age_secs: i64,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let name = &self.jar.name;
        let written = seal::split(name, value, seal::MAX_PAIR_LEN);
        if written.len() > seal::MAX_CHUNKS {
            tracing::error!(
                bytes = value.len(),
                "the session does not fit in {} cookies; use `proxy.session.store: server`",
                seal::MAX_CHUNKS
            );
            return Err(SessionError::Sealing);
        }
        let mut cookies: Vec<HeaderValue> = written
            .iter()
            .map(|(name, value)| self.jar.set(name, value, max_age_secs))
            .collect();
        cookies.extend(self.clear_stale(&written, request));
        Ok(cookies)
    }

    /// Clearings of the chunks the request carries that `written` does not overwrite (a later
    /// join would read them), at most [`MAX_CLEARED`].
    fn clear_stale(&self, written: &[(String, String)], request: &HeaderMap) -> Vec<HeaderValue> {
        let name = &self.jar.name;
        let present: Vec<&str> = crate::web::cookie::cookie_pairs(request)
            .map(|(name, _)| name)
            .collect();
        seal::stale(name, written, &present)
            .iter()
            .filter(|stale| !cookie::is_csrf(name, stale))
            .take(MAX_CLEARED)
            .map(|stale| self.jar.clear(stale))
            .collect()
    }

    /// Clearings for the session cookies (single or chunk) the request carries, at most
    /// [`MAX_CLEARED`], and the single one in any case.
    pub(crate) fn clear_all(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        let mut seen = HashSet::from([self.jar.name.as_str()]);
        let chunks = self
            .carried(request)
            .filter(|name| seen.insert(name))
            .take(MAX_CLEARED - 1);
        std::iter::once(self.jar.name.as_str())
            .chain(chunks)
            .map(|name| self.jar.clear(name))
            .collect()
    }

    /// [`SessionCookie::clear_all`] when the request carries a session cookie, else nothing:
    /// the answer to a request whose cookie leads to no session.
    pub(super) fn clear_carried(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        if self.carried(request).next().is_some() {
            self.clear_all(request)
        } else {
            Vec::new()
        }
    }

    /// The names of the session cookies (single or chunk, not login states) the request
    /// carries, in its order.
    fn carried<'h>(&self, request: &'h HeaderMap) -> impl Iterator<Item = &'h str> {
        crate::web::cookie::cookie_pairs(request)
            .map(|(name, _)| name)
            .filter(|name| self.jar.is_session(name))
    }
}
