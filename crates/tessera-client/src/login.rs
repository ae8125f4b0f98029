//! `tessera login`: a browser login (the authorization code flow with PKCE S256 through a
//! loopback redirect on 127.0.0.1, RFC 8252 §7.3, in `browser`), then the kubeconfig entries
//! that make kubectl call the credential plugin.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tessera_oidc::{self as oidc, RelyingParty};

use crate::browser::{browser_login, has_display};
use crate::cache;
use crate::kube_user::KubeUser;
use crate::kubeconfig::{self, Kubeconfig};

/// `tessera login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Host name of the tessera server; the issuer is https://HOST.
    #[arg(long, conflicts_with = "issuer", required_unless_present = "issuer")]
    host: Option<String>,
    /// Issuer URL, when it has a path or a port.
    #[arg(long)]
    issuer: Option<String>,
    /// PEM CA bundle to trust for the issuer; default: the system's roots.
    #[arg(long)]
    certificate_authority: Option<PathBuf>,
    /// Kubeconfig to write; default: KUBECONFIG's first file, else ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Name of the context to write; default: the cluster's name.
    #[arg(long)]
    context: Option<String>,
    /// Write the context but do not make it the current one.
    #[arg(long)]
    no_set_context: bool,
    /// Sign in through this connector of the server (its `id` in `connectors:`), skipping the
    /// choice on the login page; kept in the kubeconfig for the logins `credential` starts.
    #[arg(long, value_name = "ID")]
    connector: Option<String>,
    /// Print the login URL instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Write the classic `auth-provider: oidc` user (tokens in the kubeconfig) instead of the
    /// exec plugin, for tools that need it.
    #[arg(long)]
    legacy_auth_provider: bool,
}

impl LoginArgs {
    /// The issuer URL, https, without a trailing `/`.
    fn issuer(&self) -> Result<String> {
        let issuer = match (&self.issuer, &self.host) {
            (Some(issuer), _) => issuer.clone(),
            (None, Some(host)) => format!("https://{host}"),
            (None, None) => bail!("pass --host HOST or --issuer URL"),
        };
        let url = url::Url::parse(&issuer)
            .with_context(|| format!("`{issuer}` is not a URL; pass --issuer https://HOST"))?;
        if url.scheme() != "https" {
            bail!("the issuer must be an https URL, not `{issuer}`");
        }
        Ok(issuer.trim_end_matches('/').to_owned())
    }

    /// The CA bundle as an absolute path: the kubeconfig's exec entry runs from anywhere.
    fn ca_file(&self) -> Result<Option<PathBuf>> {
        let Some(file) = &self.certificate_authority else {
            return Ok(None);
        };
        let absolute = std::fs::canonicalize(file)
            .with_context(|| format!("cannot find the CA bundle {}", file.display()))?;
        Ok(Some(absolute))
    }

    /// The token cache directory, checked private; none for the legacy entry, which keeps its
    /// tokens in the kubeconfig.
    fn cache_dir(&self) -> Result<Option<PathBuf>> {
        if self.legacy_auth_provider {
            return Ok(None);
        }
        let dir = cache::default_dir()
            .context("no cache directory: set HOME, XDG_CACHE_HOME or TESSERA_CACHE_DIR")?;
        cache::require_private_dir(&dir)?;
        Ok(Some(dir))
    }
}

/// The cluster a tessera server publishes at `/kube/cluster`.
#[derive(Clone, Debug, Deserialize)]
struct Cluster {
    /// Name for kubeconfig entries.
    cluster_name: String,
    /// API server URL.
    server: String,
    /// Base64 PEM of the API server's CA, if it is not publicly trusted.
    #[serde(default)]
    certificate_authority_data: Option<String>,
    /// The client id kubectl uses.
    client_id: String,
}

impl Cluster {
    /// The cluster, the user `name` and the context in `kubeconfig`, as `kubectl config set-*`
    /// would write them; the context becomes the current one if `make_current`.
    fn write_to(
        &self,
        kubeconfig: &mut Kubeconfig,
        name: &str,
        user: yaml_serde::Mapping,
        context: &str,
        make_current: bool,
    ) {
        kubeconfig.set_cluster(
            &self.cluster_name,
            &self.server,
            self.certificate_authority_data.as_deref(),
        );
        kubeconfig.set_user(name, user);
        kubeconfig.set_context(context, &self.cluster_name, name);
        if make_current {
            kubeconfig.use_context(context);
        }
    }
}

/// Logs in, writes the token cache and the kubeconfig's cluster, user and context.
pub async fn login(args: &LoginArgs) -> Result<()> {
    let issuer = args.issuer()?;
    let ca_file = args.ca_file()?;
    // Fail on a broken kubeconfig or cache directory before the user goes through a login. The
    // kubeconfig is read again to be written, under its lock, once the login is done.
    let kubeconfig_path = kubeconfig::resolve_path(args.kubeconfig.as_deref())?;
    Kubeconfig::load(&kubeconfig_path)?;
    let cache_dir = args.cache_dir()?;
    let http = oidc::http_client(ca_file.as_deref())?;
    let provider = oidc::discover(&http, &issuer).await?;
    let cluster: Cluster = oidc::get_json(&http, &format!("{issuer}/kube/cluster")).await?;
    let rp = RelyingParty::discovered(http, provider, oidc::Client::public(&cluster.client_id));
    let connector = args.connector.as_deref();
    let logged_in = browser_login(&rp, connector, !args.no_browser && has_display()).await?;
    let kube_user = KubeUser {
        issuer: &issuer,
        client_id: &cluster.client_id,
        username: logged_in.claims.username().to_owned(),
        ca_file: ca_file.as_deref(),
        connector,
    };
    let user = match cache_dir {
        Some(dir) => kube_user.cached(&dir, rp.metadata().await?, logged_in)?,
        None => kube_user.legacy(&logged_in)?,
    };
    let name = format!("{}@{}", kube_user.username, cluster.cluster_name);
    let context = args.context.clone().unwrap_or(cluster.cluster_name.clone());
    let make_current = !args.no_set_context;
    Kubeconfig::edit(&kubeconfig_path, kubeconfig::LOCK_TIMEOUT, |kubeconfig| {
        cluster.write_to(kubeconfig, &name, user, &context, make_current);
    })
    .await?;
    let current = if args.no_set_context {
        ""
    } else {
        ", now the current context"
    };
    eprintln!(
        "Logged in to {issuer} as {}. Wrote context `{context}` to {}{current}.",
        kube_user.username,
        kubeconfig_path.display()
    );
    Ok(())
}

/// Whether someone can answer a browser login: kubectl says so in `KUBERNETES_EXEC_INFO`
/// (`spec.interactive`); without it, whether standard input is a terminal.
pub fn is_interactive(exec_info_interactive: Option<bool>) -> bool {
    exec_info_interactive.unwrap_or_else(|| std::io::stdin().is_terminal())
}
