//! A real, independent OpenID Connect provider upstream for the `type: oidc` connector's tests:
//! node's certified `oidc-provider` (installed by `scripts/test-tools oidc-provider`), run by
//! `upstream-oidc/server.mjs` over HTTPS with a test CA of its own, on a free loopback port.
//! People sign in there without a browser page (the script's interactions finish at once); the
//! script's `/test/…` hooks pick who signs in next, refuse a sign-in, forge the next id_token,
//! or end a person's grants. Its node process is killed by PID when this is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;

use crate::cluster::{Process, test_tools};
use crate::support::{Server, client, write_private, write_test_pki};

/// tessera's client secret at the upstream.
pub const CLIENT_SECRET: &str = "upstream-client-secret-for-tessera";

/// A running oidc-provider. Fields drop in order: the process, then its files.
pub struct OidcProvider {
    process: Process,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`.
    pub issuer: String,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Makes a CA and a certificate, and starts the provider on a free port.
    pub async fn start() -> OidcProvider {
        let modules = test_tools(&["oidc-provider"])
            .pop()
            .expect("test-tools prints oidc-provider's directory");
        let dir = tempfile::tempdir().unwrap();
        write_test_pki(dir.path(), "tessera test upstream CA");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/blackbox/upstream-oidc/server.mjs");
        let process = Process::spawn(
            "oidc-provider".into(),
            Command::new("node")
                .arg(script)
                .arg(&modules)
                .arg(dir.path().join("server.pem"))
                .arg(dir.path().join("server-key.pem"))
                .arg(CLIENT_SECRET),
        );
        let mut issuer = None;
        for _ in 0..600 {
            issuer = process
                .output()
                .lines()
                .find_map(|l| l.strip_prefix("issuer: ").map(str::to_owned));
            if issuer.is_some() || process.exited().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let issuer = issuer.unwrap_or_else(|| {
            panic!("oidc-provider did not start:\n{}", process.output());
        });
        let http = client(&dir.path().join("ca.pem"), false);
        OidcProvider {
            process,
            dir,
            issuer,
            http,
        }
    }

    /// Kills the provider (by its PID): from now on it refuses connections.
    pub fn stop(&self) {
        self.process.kill();
    }

    /// The CA its certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A file holding tessera's client secret, private.
    pub fn client_secret_file(&self) -> PathBuf {
        let file = self.dir.path().join("client-secret");
        write_private(&file, CLIENT_SECRET);
        file
    }

    /// Registers tessera's callback for `connector` of `server`; the provider serves from now.
    pub async fn register(&self, server: &Server, connector: &str) {
        let callback = format!("{}/callback/{connector}", server.issuer);
        self.hook(&[("redirect_uri", callback.as_str())], "/test/client")
            .await;
    }

    /// The next sign-ins are `account`'s.
    pub async fn next_sign_in_as(&self, account: &str) {
        self.hook(&[("account", account)], "/test/next").await;
    }

    /// The next sign-in is refused with `access_denied`.
    pub async fn deny_next_sign_in(&self) {
        self.hook(&[("deny", "1")], "/test/next").await;
    }

    /// The id_token of the next token answer is forged: `aud` or `nonce` wrong and re-signed
    /// with the provider's key, or `none`: unsigned.
    pub async fn forge_next_id_token(&self, how: &str) {
        self.hook(&[("with", how)], "/test/tamper").await;
    }

    /// The next token answer comes without an id_token (OpenID Connect Core §12.2 allows it
    /// for a refresh).
    pub async fn drop_next_id_token(&self) {
        self.hook(&[("with", "drop")], "/test/tamper").await;
    }

    /// The next token request gets no answer (for 30 s).
    pub async fn stall_next_token_request(&self) {
        self.hook(&[], "/test/stall").await;
    }

    /// Ends every grant of `account`: their refresh tokens answer `invalid_grant` from now.
    pub async fn revoke_grants_of(&self, account: &str) {
        self.hook(&[("account", account)], "/test/revoke").await;
    }

    async fn hook(&self, query: &[(&str, &str)], path: &str) {
        let answer = self
            .http
            .post(format!("{}{path}", self.issuer))
            .query(query)
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::NO_CONTENT,
            "{path}:\n{}",
            self.process.output()
        );
    }
}
