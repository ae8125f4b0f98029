//! The browser login of the kubectl plugin: authorization code flow with PKCE S256 (RFC 7636)
//! through a loopback redirect on 127.0.0.1 (RFC 8252 §7.3), then `tessera login`'s kubeconfig
//! entries.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tessera_oidc::{self as oidc, AuthorizationRequest, Expected, IdClaims, RelyingParty, Tokens};

use crate::cache;
use crate::kube_user::KubeUser;
use crate::kubeconfig::{self, Kubeconfig};
use crate::loopback::LoopbackRedirect;

/// How long a login waits for the browser to come back.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The scopes kubectl asks for: identity, groups for RBAC, and a refresh token.
const SCOPES: &str = "openid profile email groups offline_access";

/// A finished login.
#[derive(Debug)]
pub struct LoggedIn {
    /// What the token endpoint answered.
    pub tokens: Tokens,
    /// The verified id_token's claims.
    pub claims: IdClaims,
}

/// Runs the authorization code flow: prints (and, when there is a display, opens) the
/// authorization URL and waits for the browser to come back to a loopback listener.
pub async fn browser_login(rp: &RelyingParty, open_browser: bool) -> Result<LoggedIn> {
    let provider = rp.metadata().await?;
    let redirect = LoopbackRedirect::bind().await?;
    let redirect_uri = redirect.uri();
    let state = oidc::random_token();
    let nonce = oidc::random_token();
    let verifier = oidc::random_token();
    let challenge = tessera_core::pkce::s256_challenge(&verifier);
    let url = AuthorizationRequest {
        client_id: &rp.client().id,
        redirect_uri: &redirect_uri,
        scope: SCOPES,
        state: &state,
        nonce: &nonce,
        code_challenge: &challenge,
    }
    .url(&provider.authorization_endpoint)?;
    if open_browser && open_in_browser(url.as_str()) {
        eprintln!("Opened a browser to sign in. If it did not open, visit:\n\n    {url}\n");
    } else {
        eprintln!("Open this URL in a browser to sign in:\n\n    {url}\n");
    }
    let params = redirect.wait(&state, LOGIN_TIMEOUT).await?;
    let code = authorization_code(&params, &provider.issuer)?;
    let tokens = rp.exchange_code(code, &redirect_uri, &verifier).await?;
    let claims = rp
        .verify_id_token(&tokens.id_token, Expected::Nonce(&nonce))
        .await?;
    Ok(LoggedIn { tokens, claims })
}

/// The code of an authorization response (RFC 6749 §4.1.2), unless the provider refused, or
/// the response names another issuer than the one asked (RFC 9207 §2.4: a mix-up attack).
fn authorization_code<'p>(params: &'p HashMap<String, String>, issuer: &str) -> Result<&'p str> {
    if let Some(error) = params.get("error") {
        let description = params.get("error_description").map_or("", String::as_str);
        bail!("the provider refused the login: {error} {description}");
    }
    if let Some(iss) = params.get("iss")
        && iss != issuer
    {
        bail!(
            "the login came back from issuer {iss}, not {issuer} (RFC 9207); run the command again"
        );
    }
    params
        .get("code")
        .map(String::as_str)
        .context("the provider sent the browser back without a code")
}

/// Whether a browser can be shown: a graphical session on Linux, always on macOS.
pub fn has_display() -> bool {
    cfg!(target_os = "macos")
        || ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()))
}

/// Starts the desktop's browser on `url`; `false` when it could not be started.
fn open_in_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

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
    let logged_in = browser_login(&rp, !args.no_browser && has_display()).await?;
    let kube_user = KubeUser {
        issuer: &issuer,
        client_id: &cluster.client_id,
        username: logged_in.claims.username().to_owned(),
        ca_file: ca_file.as_deref(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const ISSUER: &str = "https://tessera.example";

    fn response(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_code_counts_only_without_an_error_and_from_the_issuer_asked() {
        let code = response(&[("code", "c"), ("state", "s")]);
        assert_eq!(authorization_code(&code, ISSUER).unwrap(), "c");
        let same_issuer = response(&[("code", "c"), ("iss", ISSUER)]);
        assert_eq!(authorization_code(&same_issuer, ISSUER).unwrap(), "c");
        for (pairs, said) in [
            (
                &[("error", "access_denied"), ("error_description", "no")][..],
                "the provider refused the login: access_denied no",
            ),
            (
                &[("code", "c"), ("iss", "https://evil.example")][..],
                "the login came back from issuer https://evil.example, not https://tessera.example (RFC 9207); run the command again",
            ),
            (
                &[("state", "s")][..],
                "the provider sent the browser back without a code",
            ),
        ] {
            let error = authorization_code(&response(pairs), ISSUER).unwrap_err();
            assert_eq!(error.to_string(), said);
        }
    }
}
