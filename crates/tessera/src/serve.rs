//! `tessera serve`: load the configuration (preparing a dev data directory first with
//! `--dev`), open the store, build the [`App`], and serve HTTPS until SIGTERM or Ctrl-C has
//! drained the connections (see [`crate::shutdown`]); then flush the audit log.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tessera_core::clock::{Clock, SystemClock};
use tessera_store::Store;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::app::{App, AppParts};
use crate::audit::Audit;
use crate::config::Config;
use crate::connector::Connectors;
use crate::listener::{self, Connections};
use crate::proxy::provider::Provider;
use crate::proxy::{self, Proxy, ProxyParts};
use crate::shutdown;
use crate::users::Users;
use crate::{dev, http, tls};

/// How often expired rows are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Options of `tessera serve`.
pub struct ServeOptions {
    /// Prepare and use a development data directory.
    pub dev: bool,
    /// The data directory for `--dev`.
    pub data_dir: PathBuf,
    /// The configuration file (without `--dev`).
    pub config: Option<PathBuf>,
    /// Overrides `listen`.
    pub listen: Option<String>,
}

/// Runs the provider.
pub async fn run(options: ServeOptions) -> Result<()> {
    let setup = dev_setup(&options)?;
    let mut config = load_config(&options, setup.as_ref())?;
    let (listener, tls) = bind_provider(&config)?;
    let address = listener.local_addr()?;
    let connections = Connections::new(
        config.limits,
        &config.trusted_proxies,
        listener::raise_open_files_limit(),
    );
    let proxy_listener = bind_proxy(&mut config)?;
    let store = crate::storage::open(&config.storage).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = Arc::new(start_app(config, address, Arc::clone(&store), Arc::clone(&clock)).await?);
    let shutdown = app.shutdown.clone();
    let proxy = match proxy_listener {
        Some(listener) => {
            Some(spawn_proxy(&app, listener, store, clock, connections.clone()).await?)
        }
        None => None,
    };
    spawn_maintenance(Arc::clone(&app));
    if let Some(path) = app.config.users_file.clone() {
        crate::users::reload::spawn(Arc::clone(&app), path).context("cannot listen for SIGHUP")?;
    }
    shutdown::stop_on_signals(&shutdown, app.config.shutdown_grace)
        .context("cannot listen for SIGTERM")?;
    announce(address, &app.issuer, setup.as_ref());
    let mut cut = connections
        .serve(
            tokio::net::TcpListener::from_std(listener)?,
            Some(TlsAcceptor::from(tls)),
            http::router(Arc::clone(&app)),
            |peer: SocketAddr| peer,
            &shutdown,
        )
        .await;
    if let Some(proxy) = proxy {
        // The proxy drains on the same timeline, so this waits no longer than the grace.
        cut += proxy.await.unwrap_or(0);
    }
    shutdown::report(cut);
    // Every answered request recorded its events before its answer was sent or dropped.
    app.audit.flush();
    Ok(())
}

/// With `--dev`, the data directory prepared (the dev user's password from
/// `TESSERA_DEV_PASSWORD`, if set).
fn dev_setup(options: &ServeOptions) -> Result<Option<dev::DevSetup>> {
    if !options.dev {
        return Ok(None);
    }
    let password = std::env::var("TESSERA_DEV_PASSWORD").ok();
    Ok(Some(dev::prepare(&options.data_dir, password)?))
}

/// The configuration to serve: the dev data directory's, or `--config`'s, with `--listen`
/// applied.
fn load_config(options: &ServeOptions, setup: Option<&dev::DevSetup>) -> Result<Config> {
    let config_path = match (setup, &options.config) {
        (Some(s), _) => s.config_path.clone(),
        (None, Some(path)) => path.clone(),
        (None, None) => bail!(
            "no configuration: pass --config FILE, or --dev to create one in {}",
            options.data_dir.display()
        ),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut config = Config::load(&config_path, &env)?;
    if let Some(listen) = &options.listen {
        config.listen = listen.parse().with_context(|| {
            format!("--listen `{listen}` is not an address like 127.0.0.1:8443")
        })?;
    }
    Ok(config)
}

/// The provider's listening socket (non-blocking, for Tokio) and its TLS configuration:
/// tessera serves HTTPS only.
fn bind_provider(config: &Config) -> Result<(TcpListener, Arc<rustls::ServerConfig>)> {
    let Some((cert, key)) = &config.tls else {
        bail!(
            "{}: set tls.cert_file and tls.key_file; tessera serves HTTPS only (issuers must be https URLs)",
            config.path.display()
        );
    };
    let tls = tls::server_config(cert, key)?;
    let listener = TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    Ok((listener, tls))
}

/// The proxy's sockets, if it is configured. They are bound before the provider starts, so that
/// the provider can register the proxy's callback on their address when it is the proxy's
/// provider.
fn bind_proxy(config: &mut Config) -> Result<Option<proxy::Listeners>> {
    let Some(p) = &config.proxy else {
        return Ok(None);
    };
    let listeners = proxy::Listeners::bind(p.listen)?;
    if p.provider.is_none() {
        proxy::register_local_client(&mut config.clients, p, listeners.local_addr())?;
    }
    Ok(Some(listeners))
}

/// The provider's [`App`] on `store`, with the configured users and audit log; its issuer is
/// the configured one, else `https://` and the bound `address`.
async fn start_app(
    config: Config,
    address: SocketAddr,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
) -> Result<App> {
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("https://{address}"));
    let audit = Audit::start(config.audit_file.as_deref())
        .with_context(|| format!("cannot open the audit log {:?}", config.audit_file))?;
    build_app(config, issuer, store, clock, audit).await
}

/// An [`App`] on `store` with the configured users and connectors: the provider's, or the one
/// the admin commands act through.
pub async fn build_app(
    config: Config,
    issuer: String,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    audit: Audit,
) -> Result<App> {
    let connectors = Connectors::new(&config.connectors, config.group_mapping.clone())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.path.display()))?;
    let users = match &config.users_file {
        Some(path) => {
            Users::load_beside(path, connectors.has_directories()).map_err(anyhow::Error::msg)?
        }
        None => Users::default(),
    };
    Ok(App::new(AppParts {
        config,
        issuer,
        store,
        clock,
        audit,
        users,
        connectors,
    })
    .await?)
}

/// Serves the proxy on `listener` in the background, its provider this process's `app` or the
/// configured external one, until the app's shutdown has drained it; the task answers how many
/// of its connections were cut.
async fn spawn_proxy(
    app: &Arc<App>,
    listener: proxy::Listeners,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    connections: Connections,
) -> Result<JoinHandle<usize>> {
    let Some(proxy_config) = app.config.proxy.clone() else {
        bail!("the proxy's sockets are bound only when `proxy:` is configured");
    };
    let provider = match proxy_config.provider.clone() {
        Some(external) => Provider::remote(external)?,
        None => Provider::Local {
            app: Arc::clone(app),
        },
    };
    let proxy = Proxy::new(ProxyParts {
        config: proxy_config,
        provider,
        store: Some(store),
        clock,
        trusted_proxies: app.config.trusted_proxies.clone(),
    })
    .await?;
    println!("proxy listening on http://{}", listener.local_addr());
    let shutdown = app.shutdown.clone();
    Ok(tokio::spawn(async move {
        match listener.serve(Arc::new(proxy), connections, shutdown).await {
            Ok(cut) => cut,
            Err(e) => {
                tracing::error!(error = %e, "the proxy stopped");
                0
            }
        }
    }))
}

/// The stable start-up lines scripts rely on, then the dev hints.
fn announce(address: SocketAddr, issuer: &str, setup: Option<&dev::DevSetup>) {
    println!("listening on https://{address}");
    println!("issuer: {issuer}");
    if let Some(setup) = setup {
        println!("ca: {}", setup.ca_path.display());
        for line in &setup.announcements {
            println!("{line}");
        }
        println!("try it:");
        println!(
            "  curl --cacert {} {issuer}/.well-known/openid-configuration",
            setup.ca_path.display()
        );
        println!(
            "  open {issuer}/authorize?client_id=demo&response_type=code&scope=openid%20profile%20email%20groups&redirect_uri=http%3A%2F%2F127.0.0.1%3A8000%2Fcallback"
        );
        println!(
            "  (sign in as `dev`; exchange the code at {issuer}/token with client `demo` and its secret)"
        );
    }
}

/// The background work of a provider: reloading the signing keys, closing rate-limit windows,
/// sweeping expired rows.
fn spawn_maintenance(app: Arc<App>) {
    tokio::spawn(reload_keys(Arc::clone(&app)));
    tokio::spawn(close_rate_limit_windows(Arc::clone(&app)));
    tokio::spawn(sweep(app));
}

/// Re-reads the signing keys every `keys.reload_interval`, keeping the current ones when that
/// fails.
async fn reload_keys(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.key_reload_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = app.reload_keys().await {
            tracing::warn!(error = %e, "cannot reload signing keys; keeping the current ones");
        }
    }
}

/// Ends the login rate limits' windows: their summaries follow the end of a window within one
/// tick.
async fn close_rate_limit_windows(app: Arc<App>) {
    let every = app
        .config
        .login_failure_window
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        app.close_rate_limit_windows();
    }
}

/// Deletes expired rows every [`SWEEP_INTERVAL`].
async fn sweep(app: Arc<App>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        match app.sweep().await {
            Ok(n) => tracing::debug!(rows = n, "swept expired rows"),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}
