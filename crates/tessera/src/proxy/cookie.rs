//! The proxy's cookies: their names, writing them with tessera's strict attributes (`Secure;
//! HttpOnly; SameSite=Lax`, `Path=/`, the configured `Domain`), and removing the proxy's own
//! cookies from what the upstream sees. Reading and writing cookies is `web::cookie`.

use axum::http::{HeaderMap, HeaderValue};

/// How many characters of a login's `state` name its cookie: enough that two logins in one
/// browser never share one (96 random bits), short enough to keep the name small.
const CSRF_NAME_STATE_CHARS: usize = 16;

/// Most logins one browser may have under way at once, each with its own state cookie (tabs
/// sent to log in together, see [`CookieJar::csrf_name`]). Without a bound, every
/// `/oauth2/start` would add a cookie for ten minutes until the browser's `Cookie` header grew
/// past what servers accept.
pub(crate) const MAX_LOGIN_STATES: usize = 8;

/// What follows the session cookie's name in the name of the cookie that asks for credentials
/// at this browser's next login (see [`CookieJar::credentials_name`]).
const CREDENTIALS_SUFFIX: &str = "_credentials";

/// Whether `name` is a login-state cookie of the jar named `jar_name`.
pub(crate) fn is_csrf(jar_name: &str, name: &str) -> bool {
    name.strip_prefix(jar_name)
        .is_some_and(|rest| rest.starts_with("_csrf_"))
}

/// How the proxy writes its cookies.
#[derive(Clone, Debug)]
pub(crate) struct CookieJar {
    /// The session cookie's name; chunks are `NAME_0`, …; login states are `NAME_csrf_…`.
    pub(crate) name: String,
    /// The `Domain` attribute, if configured.
    pub(crate) domain: Option<String>,
}

impl CookieJar {
    /// Name of the cookie that carries one login's state from `/oauth2/start` to the callback:
    /// one per login (named by the start of its `state`), so that several tabs sent to log in
    /// at once each come back to their own. `None` for a `state` we cannot have made.
    pub(crate) fn csrf_name(&self, state: &str) -> Option<String> {
        let prefix = state.get(..CSRF_NAME_STATE_CHARS)?;
        let ours = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ours.then(|| format!("{}_csrf_{prefix}", self.name))
    }

    /// Name of the cookie that makes this browser's next login ask for credentials: its last
    /// session timed out or was signed out of, which the provider's single sign-on must not
    /// undo. Cleared by a login that asked.
    pub(crate) fn credentials_name(&self) -> String {
        format!("{}{CREDENTIALS_SUFFIX}", self.name)
    }

    /// A `Set-Cookie` value for the whole site that lives `max_age_secs` (0 deletes it).
    pub(crate) fn set(&self, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
        crate::web::cookie::set_cookie(
            name,
            value,
            "/",
            self.domain.as_deref(),
            max_age_secs.max(0),
        )
    }

    /// A `Set-Cookie` that deletes `name`.
    pub(crate) fn clear(&self, name: &str) -> HeaderValue {
        self.set(name, "", 0)
    }

    /// Whether `cookie` is one of the proxy's own (session, chunk, login state or the demand
    /// for credentials).
    pub(crate) fn is_ours(&self, cookie: &str) -> bool {
        self.is_session(cookie)
            || is_csrf(&self.name, cookie)
            || cookie
                .strip_prefix(self.name.as_str())
                .is_some_and(|rest| rest == CREDENTIALS_SUFFIX)
    }

    /// Whether `cookie` carries a session: the single cookie or one of its chunks.
    pub(crate) fn is_session(&self, cookie: &str) -> bool {
        cookie.strip_prefix(self.name.as_str()).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('_')
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        })
    }

    /// The request's `Cookie` header without the proxy's own cookies, or `None` when nothing
    /// else is left: the upstream never sees the session. The other pairs pass on verbatim.
    pub(crate) fn strip_ours(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        crate::web::cookie::cookie_header_without(headers, |name| self.is_ours(name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::http::header::COOKIE;

    use super::*;

    #[test]
    fn only_the_proxys_cookies_are_stripped() {
        let jar = CookieJar {
            name: "_tp".into(),
            domain: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static(
                "a=1; _tp=x; _tp_0=y; _tp_12=z; _tp_csrf_abcdefgh12345678=s; _tpx=keep; \
                 _tp_credentials=1; _tp_credentialsx=keep; b=2",
            ),
        );
        assert_eq!(
            jar.strip_ours(&headers).unwrap(),
            "a=1; _tpx=keep; _tp_credentialsx=keep; b=2"
        );
        headers.insert(COOKIE, HeaderValue::from_static("_tp=x"));
        assert_eq!(jar.strip_ours(&headers), None);
    }

    #[test]
    fn each_login_has_its_own_state_cookie() {
        let jar = CookieJar {
            name: "_tp".into(),
            domain: None,
        };
        let one = jar.csrf_name("abcdefgh12345678-rest-of-state").unwrap();
        assert_eq!(one, "_tp_csrf_abcdefgh12345678");
        assert!(jar.is_ours(&one) && is_csrf("_tp", &one) && !jar.is_session(&one));
        let credentials = jar.credentials_name();
        assert!(jar.is_ours(&credentials) && !jar.is_session(&credentials));
        assert!(jar.is_session("_tp") && jar.is_session("_tp_3"));
        assert_eq!(jar.csrf_name("short"), None);
        assert_eq!(
            jar.csrf_name("abc;efgh12345678"),
            None,
            "only base64url names"
        );
    }

    #[test]
    fn cookies_are_strict() {
        let jar = CookieJar {
            name: "_tp".into(),
            domain: Some("example.com".into()),
        };
        let set = jar.set("_tp", "v", 60);
        let text = set.to_str().unwrap();
        for part in [
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Path=/",
            "Domain=example.com",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }
}
