//! The `proxy:` section of `tessera.yaml`: routes to upstreams, session timeouts, the cookie,
//! and optionally an external OpenID Connect provider. Raw serde structs mirror the file;
//! [`ProxyConfig`] is the validated form.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::{Invalid, parse_duration};

mod route;

pub use route::Route;
use route::{RawRoute, routes};

/// Raw `proxy:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// Address the proxy listens on (plain HTTP; TLS is terminated in front of it).
    #[serde(default = "default_listen")]
    listen: String,
    /// The callback URL sent to the provider; unset: `<proto>://<host>/oauth2/callback` of the
    /// request (`X-Forwarded-Proto`/`-Host` from trusted proxies).
    #[serde(default)]
    redirect_url: Option<String>,
    /// Hosts besides the routes' that `rd` may send the browser to after login or sign-out.
    #[serde(default)]
    allowed_redirect_hosts: Vec<String>,
    /// Where requests go.
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    session: RawProxySession,
    #[serde(default)]
    cookie: RawCookie,
    /// An external OpenID Connect provider; unset: this tessera's own provider.
    #[serde(default)]
    provider: Option<RawProvider>,
}

fn default_listen() -> String {
    "127.0.0.1:4180".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxySession {
    /// `server` (the session in the database, the cookie a handle) or `cookie` (sealed in it).
    store: String,
    /// Refresh the id_token when it is older than this.
    refresh_after: String,
    /// Sign out after this long without a request.
    idle_timeout: String,
    /// Sign out this long after login, whatever happens.
    absolute_timeout: String,
    /// `/oauth2/sign_out` also ends the browser's single sign-on session at the provider
    /// (RP-Initiated Logout at its `end_session_endpoint`), so the next sign-in asks for
    /// credentials; `false`: only the proxy's session ends.
    sign_out_sso: bool,
}

impl Default for RawProxySession {
    fn default() -> Self {
        RawProxySession {
            store: "server".into(),
            refresh_after: "50s".into(),
            idle_timeout: "15m".into(),
            absolute_timeout: "12h".into(),
            sign_out_sso: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCookie {
    /// Name of the session cookie (chunks are `NAME_0`, `NAME_1`, …).
    name: String,
    /// `Domain` attribute; unset: the host that set it.
    domain: Option<String>,
    /// Base64 of 32 random bytes that seal cookies (`openssl rand -base64 32`); unset with
    /// `store: server`: generated once and kept in the database.
    secret: Option<String>,
    /// Earlier secrets: cookies sealed under them still open (rotation).
    previous_secrets: Vec<String>,
}

impl Default for RawCookie {
    fn default() -> Self {
        RawCookie {
            name: "_tessera_proxy".into(),
            domain: None,
            secret: None,
            previous_secrets: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    /// The provider's issuer URL (its discovery document is read from it): `https://`, or
    /// `http://` on a loopback address only (127.0.0.0/8, ::1, localhost).
    issuer: String,
    /// The client id registered for the proxy.
    client_id: String,
    /// The client secret (or `client_secret_file`).
    #[serde(default)]
    client_secret: Option<String>,
    /// A file holding the client secret.
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    /// PEM CA bundle of the provider (relative to this file); unset: the system's roots.
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
}

/// The validated `proxy:` section.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Fixed callback URL, if configured.
    pub redirect_url: Option<url::Url>,
    /// Extra hosts `rd` may name.
    pub allowed_redirect_hosts: Vec<String>,
    /// Routes, longest path prefix first.
    pub routes: Vec<Route>,
    /// Where sessions live.
    pub store: SessionStore,
    /// Refresh the id_token when older than this.
    pub refresh_after: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Absolute timeout.
    pub absolute_timeout: Duration,
    /// Whether sign-out also ends the browser's SSO session at the provider.
    pub sign_out_sso: bool,
    /// Session cookie name.
    pub cookie_name: String,
    /// Session cookie domain.
    pub cookie_domain: Option<String>,
    /// Configured sealing key and earlier ones.
    pub cookie_keys: Option<CookieKeys>,
    /// The external provider, if any.
    pub provider: Option<ExternalProvider>,
}

/// Where proxy sessions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStore {
    /// In the database; the cookie holds an opaque handle.
    Server,
    /// Sealed into the cookie itself (no shared storage needed).
    Cookie,
}

/// The cookie sealing keys from the configuration.
#[derive(Clone)]
pub struct CookieKeys {
    /// Seals and opens.
    pub current: [u8; 32],
    /// Only open.
    pub previous: Vec<[u8; 32]>,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKeys(<{} keys>)", 1 + self.previous.len())
    }
}

/// An external OpenID Connect provider the proxy is a client of.
#[derive(Clone)]
pub struct ExternalProvider {
    /// Issuer URL, without a trailing slash.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret, if the client is confidential.
    pub client_secret: Option<String>,
    /// CA bundle file.
    pub certificate_authority: Option<PathBuf>,
}

impl std::fmt::Debug for ExternalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    (format!("proxy.{key}"), message.into())
}

/// Validates the raw section; errors carry the key's path (under `proxy.`) and what is wrong.
pub(crate) fn validate(raw: RawProxy, base: &Path) -> Result<ProxyConfig, Invalid> {
    let listen = listen(&raw.listen)?;
    let redirect_url = raw
        .redirect_url
        .as_deref()
        .map(|text| http_url(text).map_err(|m| invalid("redirect_url", m)))
        .transpose()?;
    let routes = routes(raw.routes)?;
    let session = session(&raw.session)?;
    let cookie_keys = cookie(&raw.cookie, session.store)?;
    let provider = raw.provider.map(|p| provider(p, base)).transpose()?;
    Ok(ProxyConfig {
        listen,
        redirect_url,
        allowed_redirect_hosts: raw
            .allowed_redirect_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        routes,
        store: session.store,
        refresh_after: session.refresh_after,
        idle_timeout: session.idle_timeout,
        absolute_timeout: session.absolute_timeout,
        sign_out_sso: raw.session.sign_out_sso,
        cookie_name: raw.cookie.name,
        cookie_domain: raw.cookie.domain,
        cookie_keys,
        provider,
    })
}

fn listen(text: &str) -> Result<SocketAddr, Invalid> {
    text.parse().map_err(|_| {
        invalid(
            "listen",
            format!("`{text}` is not an address like 127.0.0.1:4180"),
        )
    })
}

/// The validated `proxy.session` section.
struct Session {
    store: SessionStore,
    refresh_after: Duration,
    idle_timeout: Duration,
    absolute_timeout: Duration,
}

fn session(raw: &RawProxySession) -> Result<Session, Invalid> {
    let store = match raw.store.as_str() {
        "server" => SessionStore::Server,
        "cookie" => SessionStore::Cookie,
        other => {
            return Err(invalid(
                "session.store",
                format!("`{other}` is not one of server, cookie"),
            ));
        }
    };
    let duration = |key: &str, text: &str| {
        parse_duration(text).map_err(|m| invalid(&format!("session.{key}"), m))
    };
    let refresh_after = duration("refresh_after", &raw.refresh_after)?;
    let idle_timeout = duration("idle_timeout", &raw.idle_timeout)?;
    let absolute_timeout = duration("absolute_timeout", &raw.absolute_timeout)?;
    if idle_timeout.is_zero() || absolute_timeout.is_zero() {
        return Err(invalid("session", "timeouts must be longer than 0s"));
    }
    Ok(Session {
        store,
        refresh_after,
        idle_timeout,
        absolute_timeout,
    })
}

/// The `proxy.cookie` section's keys; a cookie store needs one, and the name must be a token.
fn cookie(raw: &RawCookie, store: SessionStore) -> Result<Option<CookieKeys>, Invalid> {
    let cookie_keys = cookie_keys(raw)?;
    if store == SessionStore::Cookie && cookie_keys.is_none() {
        return Err(invalid(
            "cookie.secret",
            "`session.store: cookie` needs a secret: set it to the output of `openssl rand -base64 32`",
        ));
    }
    if !is_cookie_name(&raw.name) {
        return Err(invalid(
            "cookie.name",
            format!("`{}` is not a valid cookie name", raw.name),
        ));
    }
    Ok(cookie_keys)
}

fn http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` is not an http(s) URL"));
    }
    Ok(url)
}

fn cookie_keys(raw: &RawCookie) -> Result<Option<CookieKeys>, Invalid> {
    let Some(current) = &raw.secret else {
        return Ok(None);
    };
    let current = key_bytes(current).map_err(|m| invalid("cookie.secret", m))?;
    let previous = raw
        .previous_secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            key_bytes(s).map_err(|m| invalid(&format!("cookie.previous_secrets[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(CookieKeys { current, previous }))
}

/// Base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
fn key_bytes(text: &str) -> Result<[u8; 32], String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|_| "is not base64; use the output of `openssl rand -base64 32`".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes, not 32; use the output of `openssl rand -base64 32`",
            bytes.len()
        )
    })
}

/// RFC 6265 §4.1.1: a token (RFC 2616 §2.2): visible ASCII without separators.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn provider(raw: RawProvider, base: &Path) -> Result<ExternalProvider, Invalid> {
    let issuer = http_url(&raw.issuer).map_err(|m| invalid("provider.issuer", m))?;
    if issuer.scheme() != "https" && !is_loopback(&issuer) {
        return Err(invalid(
            "provider.issuer",
            format!(
                "`{}` must be https:// (http:// is allowed only on loopback: 127.0.0.0/8, ::1, localhost)",
                raw.issuer
            ),
        ));
    }
    if raw.client_id.is_empty() {
        return Err(invalid("provider.client_id", "must not be empty"));
    }
    let client_secret = client_secret(raw.client_secret, raw.client_secret_file, base)?;
    Ok(ExternalProvider {
        issuer: issuer.as_str().trim_end_matches('/').to_owned(),
        client_id: raw.client_id,
        client_secret,
        certificate_authority: raw.certificate_authority.map(|f| base.join(f)),
    })
}

/// The client secret, given inline or in a file (which must be private), or none for a public
/// client; not both.
fn client_secret(
    inline: Option<String>,
    file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<String>, Invalid> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            "provider",
            "set client_secret or client_secret_file, not both",
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(file)) => {
            let file = base.join(file);
            crate::file_mode::require_private(&[&file])
                .map_err(|e| invalid("provider.client_secret_file", e.to_string()))?;
            let text = std::fs::read_to_string(&file).map_err(|e| {
                invalid(
                    "provider.client_secret_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// Whether `url` names this machine: plain HTTP to it never crosses a network.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ProxyConfig, Invalid> {
        let raw: RawProxy = yaml_serde::from_str(yaml).unwrap();
        validate(raw, Path::new("."))
    }

    #[test]
    fn routes_are_ordered_longest_prefix_first() {
        let c = parse(
            "routes:\n  - {upstream: 'http://127.0.0.1:1'}\n  - {path_prefix: /api, upstream: 'http://127.0.0.1:2'}\n  - {host: A.example.com, upstream: 'http://127.0.0.1:3'}\n",
        )
        .unwrap();
        let order: Vec<_> = c.routes.iter().map(|r| r.upstream.port()).collect();
        assert_eq!(order, [Some(2), Some(3), Some(1)]);
        assert_eq!(c.routes[1].host.as_deref(), Some("a.example.com"));
        assert_eq!(c.refresh_after, Duration::from_secs(50));
        assert_eq!(c.store, SessionStore::Server);
    }

    #[test]
    fn sign_out_ends_the_providers_sso_unless_turned_off() {
        let route = "routes: [{upstream: 'http://127.0.0.1:1'}]\n";
        assert!(parse(route).unwrap().sign_out_sso, "on by default");
        let off = parse(&format!("{route}session: {{sign_out_sso: false}}\n")).unwrap();
        assert!(!off.sign_out_sso);
        let text = format!("{route}session: {{sign_out_sso: sometimes}}\n");
        let de = yaml_serde::Deserializer::from_str(&text);
        let err = serde_path_to_error::deserialize::<_, RawProxy>(de).unwrap_err();
        assert_eq!(
            err.path().to_string(),
            "session.sign_out_sso",
            "a boolean, nothing else"
        );
    }

    #[test]
    fn a_cookie_store_needs_a_32_byte_secret() {
        let err = parse("routes: [{upstream: 'http://127.0.0.1:1'}]\nsession: {store: cookie}\n")
            .unwrap_err();
        assert_eq!(err.0, "proxy.cookie.secret");
        let err = parse("routes: [{upstream: 'http://127.0.0.1:1'}]\ncookie: {secret: c2hvcnQ=}\n")
            .unwrap_err();
        assert!(err.1.contains("5 bytes"), "{err:?}");
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let c = parse(&format!(
            "routes: [{{upstream: 'http://127.0.0.1:1'}}]\nsession: {{store: cookie}}\ncookie: {{secret: '{key}'}}\n"
        ))
        .unwrap();
        assert_eq!(c.cookie_keys.unwrap().current, [7u8; 32]);
    }

    #[test]
    fn an_external_issuer_needs_https_outside_loopback() {
        let with = |issuer: &str| {
            parse(&format!(
                "routes: [{{upstream: 'http://127.0.0.1:1'}}]\nprovider: {{issuer: '{issuer}', client_id: rp}}\n"
            ))
        };
        for plain in [
            "http://idp.example.com",
            "http://10.0.0.1:8080",
            "http://[fe80::1]",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
        ] {
            let err = with(plain).unwrap_err();
            assert_eq!(err.0, "proxy.provider.issuer", "{plain}");
            assert!(err.1.contains("https://"), "{err:?}");
        }
        for ok in [
            "https://idp.example.com",
            "http://127.0.0.1:5556/dex",
            "http://127.8.9.10",
            "http://[::1]:8080",
            "http://localhost:8080",
            "http://LOCALHOST",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn bad_upstreams_name_their_route() {
        let err = parse("routes: [{upstream: 'ftp://x'}]\n").unwrap_err();
        assert_eq!(err.0, "proxy.routes[0]");
        let err = parse("routes: [{upstream: 'http://x:1/base'}]\n").unwrap_err();
        assert!(err.1.contains("path"), "{err:?}");
        let err = parse("routes: []\n").unwrap_err();
        assert_eq!(err.0, "proxy.routes");
    }
}
