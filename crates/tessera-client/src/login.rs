//! The browser login of the kubectl plugin: authorization code flow with PKCE S256 (RFC 7636)
//! through a loopback redirect on 127.0.0.1 (RFC 8252 §7.3), then `tessera login`'s kubeconfig
//! entries.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Deserialize;
use tessera_oidc::{self as oidc, AuthorizationRequest, Expected, IdClaims, RelyingParty, Tokens};
use yaml_serde::{Mapping, Value};

use crate::cache::{self, CacheKey, TokenCache};
use crate::invocation;
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

/// Logs in, writes the token cache and the kubeconfig's cluster, user and context.
pub async fn login(args: &LoginArgs) -> Result<()> {
    let issuer = args.issuer()?;
    let ca_file = match &args.certificate_authority {
        Some(file) => Some(
            std::fs::canonicalize(file)
                .with_context(|| format!("cannot find the CA bundle {}", file.display()))?,
        ),
        None => None,
    };
    // Fail on a broken kubeconfig or cache directory before the user goes through a login. The
    // kubeconfig is read again to be written, under its lock, once the login is done.
    let kubeconfig_path = kubeconfig::resolve_path(args.kubeconfig.as_deref())?;
    Kubeconfig::load(&kubeconfig_path)?;
    let cache_dir = if args.legacy_auth_provider {
        None
    } else {
        let dir = cache::default_dir()
            .context("no cache directory: set HOME, XDG_CACHE_HOME or TESSERA_CACHE_DIR")?;
        cache::require_private_dir(&dir)?;
        Some(dir)
    };
    let http = oidc::http_client(ca_file.as_deref())?;
    let provider = oidc::discover(&http, &issuer).await?;
    let cluster: Cluster = oidc::get_json(&http, &format!("{issuer}/kube/cluster")).await?;
    let rp = RelyingParty::discovered(http, provider, oidc::Client::public(&cluster.client_id));
    let open = !args.no_browser && has_display();
    let logged_in = browser_login(&rp, open).await?;
    let provider = rp.metadata().await?;
    let username = logged_in.claims.username().to_owned();

    let user_entry = format!("{username}@{}", cluster.cluster_name);
    let context = args.context.clone().unwrap_or(cluster.cluster_name.clone());
    let user = if let Some(dir) = cache_dir {
        let key = CacheKey {
            issuer: issuer.clone(),
            client_id: cluster.client_id.clone(),
            user: username.clone(),
        };
        let token_cache = TokenCache::open(&dir, key)?;
        let _lock = token_cache.lock(cache::DEFAULT_LOCK_TIMEOUT)?;
        token_cache.write(&cache::entry_from(
            token_cache.key(),
            provider,
            logged_in.tokens,
            &logged_in.claims,
        ))?;
        exec_user(&issuer, &cluster.client_id, &username, ca_file.as_deref())?
    } else {
        legacy_user(&issuer, &cluster.client_id, ca_file.as_deref(), &logged_in)?
    };
    Kubeconfig::edit(&kubeconfig_path, kubeconfig::LOCK_TIMEOUT, |kubeconfig| {
        kubeconfig.set_cluster(
            &cluster.cluster_name,
            &cluster.server,
            cluster.certificate_authority_data.as_deref(),
        );
        kubeconfig.set_user(&user_entry, user);
        kubeconfig.set_context(&context, &cluster.cluster_name, &user_entry);
        if !args.no_set_context {
            kubeconfig.use_context(&context);
        }
    })
    .await?;
    let current = if args.no_set_context {
        ""
    } else {
        ", now the current context"
    };
    eprintln!(
        "Logged in to {issuer} as {username}. Wrote context `{context}` to {}{current}.",
        kubeconfig_path.display()
    );
    Ok(())
}

/// The exec plugin user entry (`client.authentication.k8s.io/v1`).
fn exec_user(
    issuer: &str,
    client_id: &str,
    username: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Mapping> {
    let command = std::env::current_exe().with_context(|| {
        format!(
            "cannot find the path of this {} binary for the kubeconfig",
            invocation::program()
        )
    })?;
    let mut args: Vec<Value> = ["credential", "--issuer", issuer, "--client-id", client_id]
        .into_iter()
        .map(Value::from)
        .collect();
    args.extend(["--user".into(), username.into()]);
    if let Some(ca) = ca_file {
        args.extend([
            "--certificate-authority".into(),
            ca.display().to_string().into(),
        ]);
    }
    let mut exec = Mapping::new();
    exec.insert(
        "apiVersion".into(),
        "client.authentication.k8s.io/v1".into(),
    );
    exec.insert("command".into(), command.display().to_string().into());
    exec.insert("args".into(), Value::Sequence(args));
    exec.insert("interactiveMode".into(), "IfAvailable".into());
    exec.insert("provideClusterInfo".into(), false.into());
    exec.insert(
        "installHint".into(),
        format!(
            "{} is needed to log in to this cluster; install it and run `{} login`",
            invocation::program(),
            invocation::command()
        )
        .into(),
    );
    let mut user = Mapping::new();
    user.insert("exec".into(), Value::Mapping(exec));
    Ok(user)
}

/// The classic `auth-provider: oidc` user: client-go refreshes it itself and writes the new
/// tokens back into the kubeconfig.
fn legacy_user(
    issuer: &str,
    client_id: &str,
    ca_file: Option<&std::path::Path>,
    logged_in: &LoggedIn,
) -> Result<Mapping> {
    let mut config = Mapping::new();
    config.insert("client-id".into(), client_id.into());
    config.insert("idp-issuer-url".into(), issuer.into());
    config.insert("id-token".into(), logged_in.tokens.id_token.clone().into());
    if let Some(refresh) = &logged_in.tokens.refresh_token {
        config.insert("refresh-token".into(), refresh.clone().into());
    }
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let data = base64::engine::general_purpose::STANDARD.encode(pem);
        config.insert("idp-certificate-authority-data".into(), data.into());
    }
    let mut provider = Mapping::new();
    provider.insert("name".into(), "oidc".into());
    provider.insert("config".into(), Value::Mapping(config));
    let mut user = Mapping::new();
    user.insert("auth-provider".into(), Value::Mapping(provider));
    Ok(user)
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
