//! `tessera logout`: revokes the cached refresh token at the provider (RFC 7009), which ends
//! its session, and deletes the cache entry. The login is named through the kubeconfig context
//! whose exec entry runs `credential`, or by its issuer (and client, and user): then every
//! login cached for what is named ends, and naming one that is not cached is an error, never a
//! success that leaves a session alive.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tessera_oidc::RevocationEndpoint;

use crate::cache::{self, CacheError, CacheKey, DEFAULT_LOCK_TIMEOUT, Entry};
use crate::credential::CredentialArgs;
use crate::invocation;
use crate::kubeconfig::{self, Kubeconfig};

/// `tessera logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The kubeconfig context whose login ends; default: the current context.
    #[arg(long, conflicts_with = "issuer")]
    context: Option<String>,
    /// Kubeconfig to read the context from; default: KUBECONFIG's first file, else ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Name the login by its issuer instead of through a context: every login cached for it
    /// ends (narrowed by --client-id and --user).
    #[arg(long)]
    issuer: Option<String>,
    /// With --issuer: only the logins of this client id.
    #[arg(long, requires = "issuer")]
    client_id: Option<String>,
    /// With --issuer: only the login of this user.
    #[arg(long, requires = "issuer")]
    user: Option<String>,
    /// With --issuer: PEM CA bundle to trust for the issuer.
    #[arg(long, requires = "issuer")]
    certificate_authority: Option<PathBuf>,
}

/// The `tessera credential …` line of a kubeconfig exec entry, parsed like the command line.
#[derive(Parser)]
#[command(no_binary_name = true)]
enum ExecLine {
    Credential(CredentialArgs),
}

/// Revokes the cached refresh token(s) at the provider and deletes the cache entries.
pub async fn logout(args: &LogoutArgs) -> Result<()> {
    let Some(issuer) = &args.issuer else {
        return end_login(&credential_of_context(args)?, true).await;
    };
    let issuer = issuer.trim_end_matches('/');
    let dir = cache::default_dir()
        .context("no cache directory: set HOME, XDG_CACHE_HOME or TESSERA_CACHE_DIR")?;
    let logins: Vec<CacheKey> = cache::cached_keys(&dir)?
        .into_iter()
        .filter(|key| key.issuer.trim_end_matches('/') == issuer)
        .filter(|key| args.client_id.as_ref().is_none_or(|c| *c == key.client_id))
        .filter(|key| args.user.as_ref().is_none_or(|u| *u == key.user))
        .collect();
    if logins.is_empty() {
        bail!(
            "no login to {issuer}{} is cached in {}, so nothing was revoked; check the issuer, or name the login's kubeconfig context with `{} logout --context NAME`",
            narrowed(args),
            dir.display(),
            invocation::command()
        );
    }
    for key in logins {
        let credential = CredentialArgs {
            issuer: key.issuer,
            client_id: key.client_id,
            user: key.user,
            certificate_authority: args.certificate_authority.clone(),
            // Logging out signs nobody in.
            connector: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        end_login(&credential, false).await?;
    }
    Ok(())
}

/// ` (client C, user U)` for what `--client-id` and `--user` narrowed the logins to.
fn narrowed(args: &LogoutArgs) -> String {
    let parts: Vec<String> = [("client", &args.client_id), ("user", &args.user)]
        .into_iter()
        .filter_map(|(what, value)| value.as_ref().map(|v| format!("{what} {v}")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Revokes one login's refresh token and deletes its cache entry. `absent_is_fine`: a login
/// named through a context may have nothing cached (never logged in, or logged out already).
async fn end_login(credential: &CredentialArgs, absent_is_fine: bool) -> Result<()> {
    let cache = credential.cache()?;
    let _lock = cache.lock(credential.lock_timeout)?;
    let entry = match cache.read() {
        Ok(entry) => entry,
        // Nothing usable to revoke; deleting the file is all logout can do.
        Err(CacheError::Unusable { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(entry) = &entry {
        revoke(credential, entry).await?;
    }
    cache.remove()?;
    match entry {
        Some(_) => eprintln!(
            "Logged out of {}{}: the session is revoked and {} deleted.",
            credential.issuer(),
            if credential.user.is_empty() {
                String::new()
            } else {
                format!(" as {}", credential.user)
            },
            cache.path().display()
        ),
        None if absent_is_fine => eprintln!(
            "No cached login for {}; nothing to revoke.",
            credential.issuer()
        ),
        None => bail!(
            "the cached login to {} could not be read, so its session could not be revoked; its file {} is deleted",
            credential.issuer(),
            cache.path().display()
        ),
    }
    Ok(())
}

/// Revokes `entry`'s refresh token, if it has one and its provider a revocation endpoint.
async fn revoke(credential: &CredentialArgs, entry: &Entry) -> Result<()> {
    let (Some(token), Some(url)) = (&entry.refresh_token, &entry.revocation_endpoint) else {
        return Ok(());
    };
    let http = credential.http()?;
    let endpoint = RevocationEndpoint {
        http: &http,
        url,
        client: &credential.client(),
    };
    endpoint.revoke(token).await.with_context(|| {
        format!(
            "the cache entry is kept so that you can retry `{} logout`",
            invocation::command()
        )
    })
}

/// The `credential` arguments of the context's exec entry.
fn credential_of_context(args: &LogoutArgs) -> Result<CredentialArgs> {
    let path = kubeconfig::resolve_path(args.kubeconfig.as_deref())?;
    let config = Kubeconfig::load(&path)?;
    let user = config.user_of_context(args.context.as_deref())?;
    let exec_args: Vec<String> = user
        .get("exec")
        .and_then(|e| e.get("args"))
        .and_then(|a| a.as_sequence())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    match ExecLine::try_parse_from(&exec_args) {
        Ok(ExecLine::Credential(credential)) => Ok(credential),
        Err(_) => bail!(
            "the context's user in {} does not run `tessera credential`; pass --issuer and --client-id",
            path.display()
        ),
    }
}
