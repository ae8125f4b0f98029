//! The authenticating reverse proxy (DESIGN.md "Proxy"), compatible with oauth2-proxy's
//! `/oauth2/*` endpoints and headers: routes under `tessera serve`, or `tessera proxy` alone in
//! front of any OpenID Connect provider.

mod answer;
mod caller;
mod cookie;
mod endpoints;
mod forward;
mod identity;
mod listen;
mod login;
pub mod provider;
mod redirect;
mod session;

pub use listen::Listeners;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::routing::get;
use tessera_core::clock::Clock;
use tessera_core::seal::Sealer;
use tessera_store::Store;

use self::cookie::CookieJar;
use self::provider::Provider;
use self::redirect::RedirectPolicy;
use self::session::{SessionHome, Sessions, SessionsParts, Timeouts};
use crate::config::proxy::{ExternalProvider, ProxyConfig, Route, SessionStore};
use crate::config::{Client, Config};
use crate::listener::Connections;
use crate::path::{self, UnsafePath};
use crate::shutdown::{self, Shutdown};

/// Name of the stored secret that seals proxy sessions when no `proxy.cookie.secret` is set.
const COOKIE_KEY_SECRET: &str = "proxy_cookie_key";

/// The proxy's state, shared by every request.
pub struct Proxy {
    config: ProxyConfig,
    provider: Provider,
    sessions: Sessions,
    redirects: RedirectPolicy,
    trusted_proxies: Vec<ipnet::IpNet>,
}

/// What a [`Proxy`] is built from.
pub struct ProxyParts {
    /// The `proxy:` section.
    pub config: ProxyConfig,
    /// Where users log in.
    pub provider: Provider,
    /// The database, when the process has one (`tessera serve`'s own; `tessera proxy`'s for
    /// `session.store: server`): it keeps the sessions of the `server` store, and the sealing
    /// key when `proxy.cookie.secret` is unset.
    pub store: Option<Arc<dyn Store>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// `http.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Proxy {
    /// Builds the proxy; the sealing key comes from the configuration, or from the store (made
    /// once, shared by every replica).
    pub async fn new(parts: ProxyParts) -> Result<Proxy> {
        let ProxyParts {
            config,
            provider,
            store,
            clock,
            trusted_proxies,
        } = parts;
        let sealer = cookie_sealer(&config, store.as_deref()).await?;
        let sessions = Sessions::new(SessionsParts {
            home: session_home(config.store, store)?,
            sealer,
            jar: CookieJar {
                name: config.cookie_name.clone(),
                domain: config.cookie_domain.clone(),
            },
            timeouts: Timeouts {
                refresh_after: config.refresh_after,
                idle: config.idle_timeout,
                absolute: config.absolute_timeout,
            },
            clock,
        });
        let redirects = RedirectPolicy::new(redirect_hosts(&config));
        Ok(Proxy {
            config,
            provider,
            sessions,
            redirects,
            trusted_proxies,
        })
    }

    /// The route for a request to `host` and `path` (see [`choose_route`]).
    fn route(&self, host: &str, path: &str) -> Result<Option<&Route>, UnsafePath> {
        choose_route(&self.config.routes, host, path)
    }
}

/// The routes of the proxy: oauth2-proxy's endpoints, and everything else forwarded.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/oauth2/start", get(endpoints::start))
        .route("/oauth2/sign_in", get(endpoints::start))
        .route("/oauth2/callback", get(endpoints::callback))
        .route("/oauth2/auth", get(endpoints::auth))
        .route(
            "/oauth2/sign_out",
            get(endpoints::sign_out_page).post(endpoints::sign_out),
        )
        .route("/oauth2/userinfo", get(endpoints::userinfo))
        .route(endpoints::SIGNED_OUT_PATH, get(endpoints::signed_out))
        .fallback(endpoints::proxied)
        .with_state(proxy)
}

/// Registers the client of `tessera serve`'s own proxy with the provider (see
/// [`provider::LOCAL_CLIENT_ID`]): a callback on each of the proxy's origins, and beside each
/// the page its sign-out returns to from the provider's logout.
pub fn register_local_client(
    clients: &mut HashMap<String, Client>,
    config: &ProxyConfig,
    bound: SocketAddr,
) -> Result<()> {
    let redirect_uris = local_redirect_uris(config, bound);
    let post_logout_redirect_uris = redirect_uris
        .iter()
        .map(|callback| endpoints::signed_out_url(callback))
        .collect();
    let client = provider::local_client_registration(redirect_uris, post_logout_redirect_uris);
    if clients
        .insert(provider::LOCAL_CLIENT_ID.to_owned(), client)
        .is_some()
    {
        anyhow::bail!(
            "the client id `{}` is the proxy's own; rename that entry of `clients`",
            provider::LOCAL_CLIENT_ID
        );
    }
    Ok(())
}

/// `tessera proxy --config FILE`: the proxy alone, in front of `proxy.provider`.
pub async fn run_standalone(config_path: &Path, listen: Option<&str>) -> Result<()> {
    let (config, proxy_config, external) = standalone_config(config_path, listen)?;
    // A database only where the sessions live in one: the cookie store needs none.
    let store = match proxy_config.store {
        SessionStore::Server => Some(crate::storage::open(&config.storage).await?),
        SessionStore::Cookie => None,
    };
    let listeners = Listeners::bind(proxy_config.listen)?;
    let connections = Connections::new(
        config.limits,
        &config.trusted_proxies,
        crate::listener::raise_open_files_limit(),
    );
    let proxy = Proxy::new(ProxyParts {
        config: proxy_config,
        provider: Provider::remote(external)?,
        store,
        clock: Arc::new(tessera_core::clock::SystemClock),
        trusted_proxies: config.trusted_proxies,
    })
    .await?;
    let shutdown = Shutdown::default();
    shutdown::stop_on_signals(&shutdown, config.shutdown_grace)
        .context("cannot listen for SIGTERM")?;
    println!("proxy listening on http://{}", listeners.local_addr());
    let cut = listeners
        .serve(Arc::new(proxy), connections, shutdown)
        .await?;
    shutdown::report(cut);
    Ok(())
}

/// What `tessera proxy` runs on: the file (with `TESSERA_*` overrides), its `proxy:` section
/// taken out with `--listen` applied, and the external provider that section must name.
fn standalone_config(
    config_path: &Path,
    listen: Option<&str>,
) -> Result<(Config, ProxyConfig, ExternalProvider)> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut config = Config::load(config_path, &env)?;
    let Some(mut proxy_config) = config.proxy.take() else {
        anyhow::bail!("{}: add a `proxy:` section", config_path.display());
    };
    let Some(external) = proxy_config.provider.clone() else {
        anyhow::bail!(
            "{}: `tessera proxy` needs `proxy.provider` (issuer, client_id, client_secret); \
             to use this tessera's own provider, run `tessera serve` with the `proxy:` section",
            config_path.display()
        );
    };
    if let Some(listen) = listen {
        proxy_config.listen = listen.parse().with_context(|| {
            format!("--listen `{listen}` is not an address like 127.0.0.1:4180")
        })?;
    }
    Ok((config, proxy_config, external))
}

/// The callback URLs `tessera serve` registers for its own proxy: the configured
/// `redirect_url`, `https://HOST/oauth2/callback` for each route's host, and the proxy's own
/// listening address over plain HTTP.
fn local_redirect_uris(config: &ProxyConfig, bound: SocketAddr) -> Vec<String> {
    let mut uris: Vec<String> = config.redirect_url.iter().map(|u| u.to_string()).collect();
    for host in config.routes.iter().filter_map(|r| r.host.as_ref()) {
        uris.push(format!("https://{host}{}", endpoints::CALLBACK_PATH));
    }
    uris.push(format!("http://{bound}{}", endpoints::CALLBACK_PATH));
    uris.dedup();
    uris
}

/// The key that seals cookies and session rows: `proxy.cookie.secret` (with the previous
/// secrets, so that cookies sealed before a rotation still open), or else a key made once in
/// the database, which every replica then shares.
async fn cookie_sealer(config: &ProxyConfig, store: Option<&dyn Store>) -> Result<Sealer> {
    if let Some(keys) = &config.cookie_keys {
        return Ok(Sealer::new(keys.current, keys.previous.clone()));
    }
    let Some(store) = store else {
        anyhow::bail!("set proxy.cookie.secret (`openssl rand -base64 32`)");
    };
    let candidate: [u8; 32] = rand::random();
    let stored = store
        .secret_or_insert(COOKIE_KEY_SECRET, candidate.to_vec())
        .await?;
    let key = <[u8; 32]>::try_from(stored.as_slice())
        .ok()
        .context("the stored proxy cookie key is not 32 bytes")?;
    Ok(Sealer::new(key, Vec::new()))
}

/// Where `proxy.session.store` keeps sessions, with the database the `server` store needs.
fn session_home(mode: SessionStore, store: Option<Arc<dyn Store>>) -> Result<SessionHome> {
    Ok(match mode {
        SessionStore::Server => SessionHome::Database(
            store.context("`proxy.session.store: server` needs the database (storage.url)")?,
        ),
        SessionStore::Cookie => SessionHome::Cookie,
    })
}

fn redirect_hosts(config: &ProxyConfig) -> Vec<String> {
    let mut hosts: Vec<String> = config
        .routes
        .iter()
        .filter_map(|r| r.host.clone())
        .collect();
    hosts.extend(
        config
            .redirect_url
            .iter()
            .filter_map(|u| u.host_str().map(str::to_owned)),
    );
    hosts.extend(config.allowed_redirect_hosts.iter().cloned());
    hosts
}

/// The route for a request to `host` (normal, with or without port) and `path` (normal),
/// among `routes` ordered best first. Refuses a path that a lenient upstream (see
/// [`path::lenient`]) would read as another route's: with `/admin` for `ops` and `/` for all,
/// `/ADMIN` or `/admin;x` would otherwise reach the admin pages of a case-insensitive server
/// or of Tomcat with the groups of `/`.
fn choose_route<'r>(
    routes: &'r [Route],
    host: &str,
    path: &str,
) -> Result<Option<&'r Route>, UnsafePath> {
    let host = redirect::without_port(host);
    let first = |matches: &dyn Fn(&Route) -> bool| {
        routes
            .iter()
            .find(|r| r.host.as_deref().is_none_or(|h| h == host) && matches(r))
    };
    let strict = first(&|r| path_matches(path, &r.path_prefix));
    let lenient = path::lenient(path)?;
    let lenient = first(&|r| path_matches(&lenient, &r.lenient_prefix));
    match (strict, lenient) {
        (Some(a), Some(b)) if std::ptr::eq(a, b) => Ok(strict),
        (None, None) => Ok(None),
        _ => Err(UnsafePath::Ambiguous),
    }
}

/// Whether `path` is under `prefix` (`/api` matches `/api` and `/api/x`, not `/apix`).
fn path_matches(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn routes(yaml: &str) -> Vec<Route> {
        let raw: crate::config::proxy::RawProxy = yaml_serde::from_str(yaml).unwrap();
        crate::config::proxy::validate(raw, Path::new("."))
            .unwrap()
            .routes
    }

    #[test]
    fn a_path_that_reads_as_another_route_leniently_is_refused() {
        let routes = routes(
            "routes:\n  - {path_prefix: /admin/, upstream: 'http://127.0.0.1:1', allowed_groups: [ops]}\n  - {path_prefix: /Docs, upstream: 'http://127.0.0.1:2'}\n  - {host: Admin.Example., upstream: 'http://127.0.0.1:3'}\n  - {upstream: 'http://127.0.0.1:4'}\n",
        );
        let port = |host: &str, path: &str| {
            choose_route(&routes, host, path).map(|r| r.and_then(|r| r.upstream.port()))
        };
        let ambiguous = Err(UnsafePath::Ambiguous);
        assert_eq!(port("h", "/admin"), Ok(Some(1)), "a prefix's / is optional");
        assert_eq!(port("h", "/admin/x"), Ok(Some(1)));
        assert_eq!(port("h", "/administrator"), Ok(Some(4)));
        assert_eq!(port("h", "/api/Pods;v=1"), Ok(Some(4)));
        assert_eq!(port("h", "/Docs/a"), Ok(Some(2)));
        assert_eq!(port("admin.example:443", "/x"), Ok(Some(3)));
        for path in [
            "/ADMIN",
            "/Admin/x",
            "/admin;x",
            "/admin.",
            "/admin%20/x",
            "/admin%3B",
        ] {
            assert_eq!(port("h", path), ambiguous, "{path}");
        }
        assert_eq!(
            port("h", "/docs"),
            ambiguous,
            "the prefix is the one in capitals"
        );
        assert_eq!(port("h", "/..;/admin"), Err(UnsafePath::AboveRoot));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/api", "/api"));
        assert!(path_matches("/api/pods", "/api"));
        assert!(!path_matches("/apis", "/api"));
        assert!(path_matches("/anything", "/"));
        assert!(path_matches("/api/x", "/api/"));
    }
}
