//! `tessera credential`, the exec credential plugin kubectl runs before its requests. The
//! answer comes from the token cache when the id_token has life left; otherwise exactly one
//! process renews it (`renewal.rs`), under the cache lock, and the others read its result.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;
use tessera_core::clock::{Clock, SystemClock, UnixMillis};
use tessera_oidc::{self as oidc, IdClaims};

use crate::cache::{self, CacheError, CacheKey, Entry, TokenCache};
use crate::renewal::Renewal;
use crate::{invocation, login};

/// Which cached login: the arguments `tessera login` writes into the kubeconfig.
#[derive(Clone, Debug, clap::Args)]
pub struct CredentialArgs {
    /// The issuer URL.
    #[arg(long)]
    pub(crate) issuer: String,
    /// The OAuth client id.
    #[arg(long)]
    pub(crate) client_id: String,
    /// The tessera user of this kubeconfig entry (one cache file per user).
    #[arg(long, default_value = "")]
    pub(crate) user: String,
    /// PEM CA bundle to trust for the issuer; default: the system's roots.
    #[arg(long)]
    pub(crate) certificate_authority: Option<PathBuf>,
    /// The server's connector to sign in through when a new login is needed.
    #[arg(long, value_name = "ID")]
    pub(crate) connector: Option<String>,
    /// How long to wait for another process's refresh, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = tessera_core::duration::parse_duration)]
    pub(crate) lock_timeout: Duration,
}

impl CredentialArgs {
    /// The issuer, without a trailing `/`.
    pub(crate) fn issuer(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    /// This login's cache file.
    pub(crate) fn cache(&self) -> Result<TokenCache> {
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
    pub(crate) fn login_hint(&self) -> String {
        let mut hint = format!("{} login --issuer {}", invocation::command(), self.issuer());
        if let Some(ca) = &self.certificate_authority {
            hint.push_str(&format!(" --certificate-authority {}", ca.display()));
        }
        if let Some(connector) = &self.connector {
            hint.push_str(&format!(" --connector {connector}"));
        }
        hint
    }

    /// The HTTPS client for the issuer.
    pub(crate) fn http(&self) -> Result<reqwest::Client> {
        Ok(oidc::http_client(self.certificate_authority.as_deref())?)
    }

    /// The plugin as the public client it is.
    pub(crate) fn client(&self) -> oidc::Client {
        oidc::Client::public(&self.client_id)
    }

    /// Refuses a new login as another user than the kubeconfig entry's.
    pub(crate) fn check_user(&self, claims: &IdClaims) -> Result<()> {
        if !self.user.is_empty() && claims.username() != self.user {
            bail!(
                "you signed in as {}, but this kubeconfig entry is for {}; sign in as {} or run `{}`",
                claims.username(),
                self.user,
                self.user,
                self.login_hint()
            );
        }
        Ok(())
    }

    /// The cached entry, read under the lock. An unusable file is replaced by a new login when
    /// someone can sign in, and otherwise named with the command that replaces it.
    fn read_locked(&self, cache: &TokenCache, interactive: bool) -> Result<Option<Entry>> {
        match cache.read() {
            Ok(entry) => Ok(entry),
            Err(e @ CacheError::Unusable { .. }) if interactive => {
                eprintln!("{e}; signing in again.");
                Ok(None)
            }
            Err(e @ CacheError::Unusable { .. }) => {
                bail!("{e}; run `{}` to replace it", self.login_hint())
            }
            Err(e) => Err(e.into()),
        }
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

impl ExecInfo {
    /// What kubectl said; nothing (an older kubectl, or a person running the command) when
    /// the variable is missing or unreadable.
    fn from_env() -> ExecInfo {
        std::env::var("KUBERNETES_EXEC_INFO")
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// The ExecCredential version to answer in: v1beta1 when kubectl asks for it, else v1.
    fn api_version(&self) -> &'static str {
        match self.api_version.as_deref() {
            Some(V1BETA1) => V1BETA1,
            _ => V1,
        }
    }
}

/// Prints an ExecCredential for kubectl.
pub fn credential(args: &CredentialArgs) -> Result<()> {
    let info = ExecInfo::from_env();
    let cache = args.cache()?;
    // Cache files are replaced by rename, so reading without the lock sees a whole file: the
    // common case (a fresh token) costs no lock at all.
    if let Ok(Some(entry)) = cache.read()
        && entry.is_fresh(SystemClock.now())
    {
        return print_credential(info.api_version(), &entry);
    }
    let _lock = cache.lock(args.lock_timeout)?;
    let interactive = login::is_interactive(info.spec.interactive);
    let cached = args.read_locked(&cache, interactive)?;
    if let Some(entry) = &cached
        && entry.is_fresh(SystemClock.now())
    {
        // Another process refreshed while this one waited for the lock.
        return print_credential(info.api_version(), entry);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let renewal = Renewal {
        args,
        cache: &cache,
        http: args.http()?,
        interactive,
    };
    let entry = runtime.block_on(renewal.run(cached))?;
    print_credential(info.api_version(), &entry)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_hint_repeats_the_ca_and_the_connector_of_the_entry() {
        let mut args = CredentialArgs {
            issuer: "https://tessera.example/".into(),
            client_id: "kubernetes".into(),
            user: "alice".into(),
            certificate_authority: None,
            connector: None,
            lock_timeout: Duration::from_secs(30),
        };
        let command = invocation::command();
        assert_eq!(
            args.login_hint(),
            format!("{command} login --issuer https://tessera.example")
        );
        args.certificate_authority = Some("/etc/tessera/ca.pem".into());
        args.connector = Some("corp".into());
        assert_eq!(
            args.login_hint(),
            format!(
                "{command} login --issuer https://tessera.example \
                 --certificate-authority /etc/tessera/ca.pem --connector corp"
            )
        );
    }

    #[test]
    fn the_answer_is_v1_unless_kubectl_asks_for_v1beta1() {
        let info = |text: &str| serde_json::from_str::<ExecInfo>(text).unwrap_or_default();
        assert_eq!(ExecInfo::default().api_version(), V1);
        assert_eq!(
            info(r#"{"apiVersion":"client.authentication.k8s.io/v1beta1"}"#).api_version(),
            V1BETA1
        );
        assert_eq!(
            info(r#"{"apiVersion":"client.authentication.k8s.io/v1"}"#).api_version(),
            V1
        );
        assert_eq!(
            info(r#"{"apiVersion":"v2","spec":{"interactive":true}}"#)
                .spec
                .interactive,
            Some(true)
        );
    }
}
