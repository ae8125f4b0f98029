//! The authenticating reverse proxy (DESIGN.md "Proxy"), compatible with oauth2-proxy's
//! `/oauth2/*` endpoints and headers: routes under `tessera serve`, or `tessera proxy` alone in
//! front of any OpenID Connect provider.

mod answer;
mod caller;
pub mod config;
mod cookie;
mod endpoints;
mod forward;
mod identity;
mod listen;
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

use self::config::{ProxyConfig, Route, SessionStore};
use self::cookie::CookieJar;
use self::provider::Provider;
use self::redirect::RedirectPolicy;
use self::session::{Sessions, SessionsParts};
use crate::config::Client;

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
    /// The database (required for `session.store: server`; keeps the sealing key otherwise
    /// unset).
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
        let sealer = match (&config.cookie_keys, &store) {
            (Some(keys), _) => Sealer::new(keys.current, keys.previous.clone()),
            (None, Some(store)) => {
                let candidate: [u8; 32] = rand::random();
                let stored = store
                    .secret_or_insert(COOKIE_KEY_SECRET, candidate.to_vec())
                    .await?;
                let key = <[u8; 32]>::try_from(stored.as_slice())
                    .ok()
                    .context("the stored proxy cookie key is not 32 bytes")?;
                Sealer::new(key, Vec::new())
            }
            (None, None) => anyhow::bail!("set proxy.cookie.secret (`openssl rand -base64 32`)"),
        };
        let session_store = match config.store {
            SessionStore::Server => Some(
                store.context("`proxy.session.store: server` needs the database (storage.url)")?,
            ),
            SessionStore::Cookie => None,
        };
        let sessions = Sessions::new(SessionsParts {
            store: session_store,
            sealer,
            jar: CookieJar {
                name: config.cookie_name.clone(),
                domain: config.cookie_domain.clone(),
            },
            refresh_after: config.refresh_after,
            idle_timeout: config.idle_timeout,
            absolute_timeout: config.absolute_timeout,
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

    /// The route for a request to `host` (with or without port) and `path`.
    fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let host = redirect::without_port(host);
        self.config.routes.iter().find(|r| {
            r.host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
                && path_matches(path, &r.path_prefix)
        })
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
            get(endpoints::sign_out).post(endpoints::sign_out),
        )
        .route("/oauth2/userinfo", get(endpoints::userinfo))
        .fallback(endpoints::proxied)
        .with_state(proxy)
}

/// Registers the client of `tessera serve`'s own proxy with the provider (see
/// [`provider::LOCAL_CLIENT_ID`]).
pub fn register_local_client(
    clients: &mut HashMap<String, Client>,
    config: &ProxyConfig,
    bound: SocketAddr,
) -> Result<()> {
    let client = provider::local_client_registration(local_redirect_uris(config, bound));
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
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = crate::config::Config::load(config_path, &env)?;
    let Some(mut proxy_config) = config.proxy else {
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
    let store = match proxy_config.store {
        SessionStore::Server => Some(crate::storage::open(&config.storage).await?),
        SessionStore::Cookie => None,
    };
    let listeners = Listeners::bind(proxy_config.listen)?;
    let proxy = Proxy::new(ProxyParts {
        config: proxy_config,
        provider: Provider::remote(external)?,
        store,
        clock: Arc::new(tessera_core::clock::SystemClock),
        trusted_proxies: config.trusted_proxies,
    })
    .await?;
    println!("proxy listening on http://{}", listeners.local_addr());
    listeners.serve(Arc::new(proxy)).await
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

/// Whether `path` is under `prefix` (`/api` matches `/api` and `/api/x`, not `/apix`).
fn path_matches(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/api", "/api"));
        assert!(path_matches("/api/pods", "/api"));
        assert!(!path_matches("/apis", "/api"));
        assert!(path_matches("/anything", "/"));
        assert!(path_matches("/api/x", "/api/"));
    }
}
