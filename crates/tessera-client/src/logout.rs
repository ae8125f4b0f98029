//! `tessera logout`: revokes the cached refresh token at the provider (RFC 7009), which ends
//! its session, and deletes the cache entry. The login is named directly, or through the
//! kubeconfig context whose exec entry runs `credential`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tessera_oidc::RevocationEndpoint;

use crate::cache::{CacheError, DEFAULT_LOCK_TIMEOUT, Entry};
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
    /// Name the login directly instead of through a context.
    #[arg(long, requires = "client_id")]
    issuer: Option<String>,
    /// With --issuer: the client id.
    #[arg(long, requires = "issuer")]
    client_id: Option<String>,
    /// With --issuer: the user.
    #[arg(long, requires = "issuer", default_value = "")]
    user: String,
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

/// Revokes the cached refresh token at the provider and deletes the cache entry.
pub async fn logout(args: &LogoutArgs) -> Result<()> {
    let credential = args.login()?;
    let cache = credential.cache()?;
    let _lock = cache.lock(credential.lock_timeout)?;
    let entry = match cache.read() {
        Ok(entry) => entry,
        // Nothing usable to revoke; deleting the file is all logout can do.
        Err(CacheError::Unusable { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(entry) = &entry {
        revoke(&credential, entry).await?;
    }
    cache.remove()?;
    match entry {
        Some(_) => eprintln!(
            "Logged out of {}: the session is revoked and {} deleted.",
            credential.issuer(),
            cache.path().display()
        ),
        None => eprintln!(
            "No cached login for {}; nothing to revoke.",
            credential.issuer()
        ),
    }
    Ok(())
}

impl LogoutArgs {
    /// The login to end: named by the options, or by the context's exec entry.
    fn login(&self) -> Result<CredentialArgs> {
        match (&self.issuer, &self.client_id) {
            (Some(issuer), Some(client_id)) => Ok(CredentialArgs {
                issuer: issuer.clone(),
                client_id: client_id.clone(),
                user: self.user.clone(),
                certificate_authority: self.certificate_authority.clone(),
                // Logging out signs nobody in.
                connector: None,
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
            }),
            _ => credential_of_context(self),
        }
    }
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
