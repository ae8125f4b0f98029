//! `tessera credential`, the exec credential plugin kubectl runs before its requests, and
//! `tessera logout`. The answer comes from the token cache when the id_token has life left;
//! otherwise exactly one process refreshes, under the cache lock, and the others read its result.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use tessera_core::clock::{Clock, SystemClock, UnixMillis};
use tessera_oidc::{
    self as oidc, IdClaims, RelyingParty, RevocationEndpoint, TokenEndpoint, Tokens,
};

use crate::cache::{
    self, CacheError, CacheKey, DEFAULT_LOCK_TIMEOUT, Entry, TokenCache, entry_from,
};
use crate::kubeconfig::{self, Kubeconfig};
use crate::{invocation, login};

/// Which cached login: the arguments `tessera login` writes into the kubeconfig.
#[derive(Clone, Debug, clap::Args)]
pub struct CredentialArgs {
    /// The issuer URL.
    #[arg(long)]
    issuer: String,
    /// The OAuth client id.
    #[arg(long)]
    client_id: String,
    /// The tessera user of this kubeconfig entry (one cache file per user).
    #[arg(long, default_value = "")]
    user: String,
    /// PEM CA bundle to trust for the issuer; default: the system's roots.
    #[arg(long)]
    certificate_authority: Option<PathBuf>,
    /// How long to wait for another process's refresh, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = tessera_core::duration::parse_duration)]
    lock_timeout: Duration,
}

impl CredentialArgs {
    fn issuer(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    fn cache(&self) -> Result<TokenCache> {
        let dir = cache::default_dir()
            .context("no cache directory: set HOME, XDG_CACHE_HOME or TESSERA_CACHE_DIR")?;
        Ok(TokenCache::open(
            &dir,
            CacheKey {
                issuer: self.issuer().to_owned(),
                client_id: self.client_id.clone(),
                user: self.user.clone(),
            },
        )?)
    }

    /// The command that starts a new session, for error messages.
    fn login_hint(&self) -> String {
        match &self.certificate_authority {
            Some(ca) => format!(
                "{} login --issuer {} --certificate-authority {}",
                invocation::command(),
                self.issuer(),
                ca.display()
            ),
            None => format!("{} login --issuer {}", invocation::command(), self.issuer()),
        }
    }

    fn http(&self) -> Result<reqwest::Client> {
        Ok(oidc::http_client(self.certificate_authority.as_deref())?)
    }

    /// The plugin as the public client it is.
    fn client(&self) -> oidc::Client {
        oidc::Client::public(&self.client_id)
    }
}

/// What kubectl tells the plugin in `KUBERNETES_EXEC_INFO`.
#[derive(Debug, Default, Deserialize)]
struct ExecInfo {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    spec: ExecInfoSpec,
}

#[derive(Debug, Default, Deserialize)]
struct ExecInfoSpec {
    #[serde(default)]
    interactive: Option<bool>,
}

const V1: &str = "client.authentication.k8s.io/v1";
const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";

/// Prints an ExecCredential for kubectl.
pub fn credential(args: &CredentialArgs) -> Result<()> {
    let info: ExecInfo = std::env::var("KUBERNETES_EXEC_INFO")
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let api_version = match info.api_version.as_deref() {
        Some(V1BETA1) => V1BETA1,
        _ => V1,
    };
    let cache = args.cache()?;
    // Cache files are replaced by rename, so reading without the lock sees a whole file: the
    // common case (a fresh token) costs no lock at all.
    if let Ok(Some(entry)) = cache.read()
        && entry.is_fresh(SystemClock.now())
    {
        return print_credential(api_version, &entry);
    }
    let _lock = cache.lock(args.lock_timeout)?;
    let interactive = login::is_interactive(info.spec.interactive);
    let cached = match cache.read() {
        Ok(entry) => entry,
        Err(e @ CacheError::Unusable { .. }) if interactive => {
            eprintln!("{e}; signing in again.");
            None
        }
        Err(e @ CacheError::Unusable { .. }) => {
            bail!("{e}; run `{}` to replace it", args.login_hint())
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(entry) = &cached
        && entry.is_fresh(SystemClock.now())
    {
        // Another process refreshed while this one waited for the lock.
        return print_credential(api_version, entry);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let entry = runtime.block_on(renew(args, &cache, cached, interactive))?;
    print_credential(api_version, &entry)
}

/// Refreshes the cached session, or logs in again when it has ended and someone can.
async fn renew(
    args: &CredentialArgs,
    cache: &TokenCache,
    cached: Option<Entry>,
    interactive: bool,
) -> Result<Entry> {
    let http = args.http()?;
    if let Some(mut entry) = cached {
        if let Some(refresh_token) = entry.refresh_token.clone() {
            let endpoint = TokenEndpoint {
                http: &http,
                url: &entry.token_endpoint,
                client: &args.client(),
            };
            match endpoint.refresh(&refresh_token).await {
                Ok(tokens) => {
                    // Straight from the token endpoint over TLS; the API server verifies it.
                    let claims: IdClaims = oidc::read_unverified_claims(&tokens.id_token)?;
                    let next = updated(entry, tokens, &claims, refresh_token);
                    cache.write(&next)?;
                    return Ok(next);
                }
                Err(oidc::Error::InvalidGrant { description: why }) => {
                    // The token is spent or its session ended: never present it again.
                    entry.refresh_token = None;
                    cache.write(&entry)?;
                    if !interactive {
                        bail!(
                            "the session with {} has ended ({why}); run `{}` to sign in again",
                            args.issuer(),
                            args.login_hint()
                        );
                    }
                    eprintln!("The session has ended ({why}); signing in again.");
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(
                        "cannot refresh the token; the cached session is kept, try again",
                    ));
                }
            }
        } else if !interactive {
            bail!(
                "the session with {} has ended; run `{}` to sign in again",
                args.issuer(),
                args.login_hint()
            );
        }
    } else if !interactive {
        bail!(
            "no cached login for {}; run `{}` first",
            args.issuer(),
            args.login_hint()
        );
    }
    let provider = oidc::discover(&http, args.issuer()).await?;
    let rp = RelyingParty::discovered(http, provider, args.client());
    let logged_in = login::browser_login(&rp, login::has_display()).await?;
    if !args.user.is_empty() && logged_in.claims.username() != args.user {
        bail!(
            "you signed in as {}, but this kubeconfig entry is for {}; sign in as {} or run `{}`",
            logged_in.claims.username(),
            args.user,
            args.user,
            args.login_hint()
        );
    }
    let entry = entry_from(
        cache.key(),
        rp.metadata().await?,
        logged_in.tokens,
        &logged_in.claims,
    );
    cache.write(&entry)?;
    Ok(entry)
}

/// The entry after a refresh; a provider that does not rotate keeps the old refresh token.
fn updated(entry: Entry, tokens: Tokens, claims: &IdClaims, previous_refresh: String) -> Entry {
    Entry {
        id_token: tokens.id_token,
        issued_at: claims.iat,
        expires_at: claims.exp,
        refresh_token: Some(tokens.refresh_token.unwrap_or(previous_refresh)),
        ..entry
    }
}

fn print_credential(api_version: &str, entry: &Entry) -> Result<()> {
    let expiry = rfc3339(entry.usable_until())?;
    let credential = json!({
        "kind": "ExecCredential",
        "apiVersion": api_version,
        "spec": {},
        "status": {
            "expirationTimestamp": expiry,
            "token": entry.id_token,
        },
    });
    println!("{credential}");
    Ok(())
}

/// RFC 3339 with milliseconds: client-go parses fractions, and whole seconds would waste up to
/// one of a 2-second token's seconds.
fn rfc3339(at: UnixMillis) -> Result<String> {
    let nanos = i128::from(at.0) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .with_context(|| {
            format!(
                "the cached token's expiry is out of range; run `{} login` again",
                invocation::command()
            )
        })
}

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
    let credential = match (&args.issuer, &args.client_id) {
        (Some(issuer), Some(client_id)) => CredentialArgs {
            issuer: issuer.clone(),
            client_id: client_id.clone(),
            user: args.user.clone(),
            certificate_authority: args.certificate_authority.clone(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        },
        _ => credential_of_context(args)?,
    };
    let cache = credential.cache()?;
    let _lock = cache.lock(credential.lock_timeout)?;
    let entry = match cache.read() {
        Ok(entry) => entry,
        // Nothing usable to revoke; deleting the file is all logout can do.
        Err(CacheError::Unusable { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(entry) = &entry
        && let (Some(token), Some(endpoint)) = (&entry.refresh_token, &entry.revocation_endpoint)
    {
        let http = credential.http()?;
        let endpoint = RevocationEndpoint {
            http: &http,
            url: endpoint,
            client: &credential.client(),
        };
        endpoint.revoke(token).await.with_context(|| {
            format!(
                "the cache entry is kept so that you can retry `{} logout`",
                invocation::command()
            )
        })?;
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
