//! The kubeconfig user a login writes: the exec plugin entry (`client.authentication.k8s.io/v1`)
//! that runs this very binary's `credential`, with the tokens in the shared cache, or the
//! classic `auth-provider: oidc` entry with the tokens in the kubeconfig, which client-go
//! refreshes itself.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use tessera_oidc::ProviderMetadata;
use yaml_serde::{Mapping, Value};

use crate::browser::LoggedIn;
use crate::cache::{self, CacheKey, TokenCache};
use crate::invocation;

/// Who logged in, where: what a kubeconfig user entry names.
#[derive(Debug)]
pub(crate) struct KubeUser<'a> {
    /// The issuer URL.
    pub(crate) issuer: &'a str,
    /// The client kubectl uses.
    pub(crate) client_id: &'a str,
    /// The name the person logged in as.
    pub(crate) username: String,
    /// The CA bundle to trust for the issuer, as an absolute path.
    pub(crate) ca_file: Option<&'a Path>,
    /// The server's connector the person signed in through, if they chose one.
    pub(crate) connector: Option<&'a str>,
}

impl KubeUser<'_> {
    /// Writes the login's tokens to the cache in `dir` (under its lock) and returns the exec
    /// plugin entry that reads them.
    pub(crate) fn cached(
        &self,
        dir: &Path,
        provider: &ProviderMetadata,
        logged_in: LoggedIn,
    ) -> Result<Mapping> {
        let key = CacheKey {
            issuer: self.issuer.to_owned(),
            client_id: self.client_id.to_owned(),
            user: self.username.clone(),
        };
        let token_cache = TokenCache::open(dir, key)?;
        let _lock = token_cache.lock(cache::DEFAULT_LOCK_TIMEOUT)?;
        token_cache.write(&cache::entry_from(
            token_cache.key(),
            provider,
            logged_in.tokens,
            &logged_in.claims,
        ))?;
        self.exec()
    }

    /// The exec plugin user entry (`client.authentication.k8s.io/v1`), running the binary that
    /// wrote it: `tessera` or `kubectl-tessera`.
    fn exec(&self) -> Result<Mapping> {
        let command = std::env::current_exe().with_context(|| {
            format!(
                "cannot find the path of this {} binary for the kubeconfig",
                invocation::program()
            )
        })?;
        let install_hint = format!(
            "{} is needed to log in to this cluster; install it and run `{} login`",
            invocation::program(),
            invocation::command()
        );
        let mut exec = Mapping::new();
        exec.insert(
            "apiVersion".into(),
            "client.authentication.k8s.io/v1".into(),
        );
        exec.insert("command".into(), command.display().to_string().into());
        exec.insert("args".into(), Value::Sequence(self.credential_args()));
        exec.insert("interactiveMode".into(), "IfAvailable".into());
        exec.insert("provideClusterInfo".into(), false.into());
        exec.insert("installHint".into(), install_hint.into());
        let mut user = Mapping::new();
        user.insert("exec".into(), Value::Mapping(exec));
        Ok(user)
    }

    /// `credential --issuer … --client-id … --user … [--certificate-authority …]
    /// [--connector …]`.
    fn credential_args(&self) -> Vec<Value> {
        let mut args: Vec<Value> = [
            "credential",
            "--issuer",
            self.issuer,
            "--client-id",
            self.client_id,
            "--user",
            &self.username,
        ]
        .into_iter()
        .map(Value::from)
        .collect();
        if let Some(ca) = self.ca_file {
            args.extend([
                "--certificate-authority".into(),
                ca.display().to_string().into(),
            ]);
        }
        if let Some(connector) = self.connector {
            args.extend(["--connector".into(), connector.into()]);
        }
        args
    }

    /// The classic `auth-provider: oidc` user: client-go refreshes it itself and writes the new
    /// tokens back into the kubeconfig.
    pub(crate) fn legacy(&self, logged_in: &LoggedIn) -> Result<Mapping> {
        let mut config = Mapping::new();
        config.insert("client-id".into(), self.client_id.into());
        config.insert("idp-issuer-url".into(), self.issuer.into());
        config.insert("id-token".into(), logged_in.tokens.id_token.clone().into());
        if let Some(refresh) = &logged_in.tokens.refresh_token {
            config.insert("refresh-token".into(), refresh.clone().into());
        }
        if let Some(ca) = self.ca_file {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn the_exec_entry_runs_this_binarys_credential_for_this_login() {
        let user = KubeUser {
            issuer: "https://tessera.example",
            client_id: "kubernetes",
            username: "dev".into(),
            ca_file: Some(Path::new("/etc/tessera/ca.pem")),
            connector: Some("corp"),
        };
        let entry = user.exec().unwrap();
        let exec = &entry["exec"];
        assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(
            exec["command"].as_str().unwrap(),
            std::env::current_exe().unwrap().display().to_string()
        );
        let args: Vec<&str> = exec["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "credential",
                "--issuer",
                "https://tessera.example",
                "--client-id",
                "kubernetes",
                "--user",
                "dev",
                "--certificate-authority",
                "/etc/tessera/ca.pem",
                "--connector",
                "corp"
            ]
        );
        assert_eq!(exec["interactiveMode"], "IfAvailable");
        assert_eq!(exec["provideClusterInfo"], false);
    }

    #[test]
    fn the_connector_written_into_the_exec_entry_reaches_the_credential_command() {
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        enum Line {
            Credential(crate::credential::CredentialArgs),
        }
        let user = |connector| KubeUser {
            issuer: "https://tessera.example",
            client_id: "kubernetes",
            username: "alice".into(),
            ca_file: None,
            connector,
        };
        for connector in [Some("corp"), None] {
            let args: Vec<String> = user(connector)
                .credential_args()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect();
            let Line::Credential(parsed) = <Line as clap::Parser>::try_parse_from(&args).unwrap();
            assert_eq!(parsed.connector.as_deref(), connector, "{args:?}");
            assert_eq!(parsed.user, "alice");
        }
    }
}
