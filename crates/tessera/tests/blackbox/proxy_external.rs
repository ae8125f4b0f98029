//! `tessera proxy` alone in front of an external OpenID Connect provider (a second tessera),
//! with the session sealed into the cookie: a user with many groups needs three chunks, which
//! are joined on every request, still open after a key rotation, and are cleared at sign-out,
//! which also revokes the session at the provider. That a refresh replaces them whole is proven
//! in-process with the clock advanced (`tests/in_process/proxy_external.rs`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::proxy::ProxyBrowser;
use crate::support::{PASSWORD, Server, write_private};
use crate::upstream::Upstream;

/// A running `tessera proxy --config FILE`, killed by PID when dropped.
pub struct StandaloneProxy {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for StandaloneProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StandaloneProxy {
    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit and answers how; panics if it is still running after a
    /// minute (a bound for a hung process, not a timing assertion).
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("tessera proxy did not exit within a minute");
    }

    pub fn start(yaml: &str) -> StandaloneProxy {
        StandaloneProxy::start_under(&[], yaml)
    }

    /// Runs it as the last arguments of `wrapper` (e.g. `prlimit --nofile=…`), if any.
    pub fn start_under(wrapper: &[&str], yaml: &str) -> StandaloneProxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tessera.yaml");
        write_private(&config, yaml);
        let tessera = env!("CARGO_BIN_EXE_tessera");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(tessera);
                command
            }
            None => Command::new(tessera),
        };
        let mut child = command
            .args(["proxy", "--config"])
            .arg(&config)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{wrapper:?} tessera proxy does not start: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("proxy listening on ")
            .unwrap_or_else(|| panic!("tessera proxy announces its address, not {line:?}"))
            .to_owned();
        StandaloneProxy {
            child,
            url,
            _dir: dir,
        }
    }
}

/// The provider: the dev set-up with user `dev` in `groups` groups and a confidential client
/// `rp` whose only redirect URI is `callback`.
async fn provider_with_client(groups: usize, callback: &str, secret: &str) -> Server {
    let hash = tessera::secret::hash_password(PASSWORD).unwrap();
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users.yaml");
    let groups: Vec<String> = (0..groups)
        .map(|i| format!("team-{i:04}-readers"))
        .collect();
    let yaml = serde_json::json!({"users": [{
        "username": "dev",
        "password_hash": hash,
        "email": "dev@example.com",
        "groups": groups,
    }]});
    write_private(&users, yaml.to_string());
    // A first start writes the dev configuration; the client `rp` is added to it for the second.
    let dir = Server::start().await.stop();
    let config = dir.path().join("tessera.yaml");
    let mut yaml: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let rp: yaml_serde::Value = yaml_serde::from_str(&format!(
        "{{id: rp, secret_hash: '{}', redirect_uris: ['{callback}']}}",
        tessera::secret::sha256_secret_hash(secret)
    ))
    .unwrap();
    yaml["clients"].as_sequence_mut().unwrap().push(rp);
    write_private(&config, yaml_serde::to_string(&yaml).unwrap());
    let server = Server::start_in(dir, &[("TESSERA_USERS__FILE", users.to_str().unwrap())]).await;
    // The users file must outlive the start only; the server has read it.
    drop(users_dir);
    server
}

/// The session's cookies (the single one or its chunks) the browser holds.
fn chunks(browser: &ProxyBrowser<'_>) -> Vec<(String, String)> {
    browser
        .cookies()
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix("_tessera_proxy").is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('_')
                        .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect()
}

/// Opens the sealed session the way the proxy does, with the keys the test configured.
fn open_session(key: [u8; 32], previous: [u8; 32], browser: &ProxyBrowser<'_>) -> Value {
    let cookies = chunks(browser);
    let pairs: Vec<(&str, &str)> = cookies
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let sealed =
        tessera_core::seal::join("_tessera_proxy", &pairs, tessera_core::seal::MAX_CHUNKS).unwrap();
    let sealer = tessera_core::seal::Sealer::new(key, vec![previous]);
    serde_json::from_slice(&sealer.open(&sealed, b"_tessera_proxy").unwrap()).unwrap()
}

#[tokio::test]
async fn a_cookie_session_from_an_external_provider_is_chunked_rotated_and_revoked_at_sign_out() {
    let upstream = Upstream::start().await;
    let port = crate::cluster::free_port();
    let callback = format!("http://127.0.0.1:{port}/oauth2/callback");
    let secret = "rp secret for the proxy test";
    let provider = provider_with_client(220, &callback, secret).await;
    let key = [42u8; 32];
    let yaml = format!(
        "proxy:
  listen: 127.0.0.1:{port}
  routes: [{{upstream: '{upstream}', pass_access_token: true}}]
  session: {{store: cookie}}
  cookie: {{secret: '{key}'}}
  provider:
    issuer: {issuer}
    client_id: rp
    client_secret: {secret}
    certificate_authority: {ca}
",
        upstream = upstream.url(),
        key = base64::engine::general_purpose::STANDARD.encode(key),
        issuer = provider.issuer,
        ca = provider.ca.display(),
    );
    let mut proxy = StandaloneProxy::start(&yaml);
    let browser = ProxyBrowser::new(&provider, &proxy.url);

    assert_eq!(browser.log_in("/board").await, "/board");
    let first = chunks(&browser);
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["_tessera_proxy_0", "_tessera_proxy_1", "_tessera_proxy_2"]
    );
    for (name, value) in &first {
        assert!(
            name.len() + 1 + value.len() <= 3840,
            "{name} stays below 4 kB"
        );
    }
    let echo: Value = browser.fetch("/echo").await.json().await.unwrap();
    let groups = echo["headers"]["x-auth-request-groups"][0]
        .as_str()
        .unwrap();
    assert_eq!(groups.split(',').count(), 220, "the chunks were joined");
    assert_eq!(
        echo["headers"]["x-auth-request-email"][0],
        "dev@example.com"
    );
    let upstream_cookies = echo["headers"]["cookie"][0].as_str().unwrap_or_default();
    assert!(
        !upstream_cookies.contains("_tessera_proxy"),
        "{upstream_cookies}"
    );

    // A new cookie secret, the old one kept as previous: the session survives the rotation.
    let new_key = [7u8; 32];
    let b64 = |k: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    drop(proxy);
    proxy = StandaloneProxy::start(&yaml.replace(
        &format!("cookie: {{secret: '{}'}}", b64(key)),
        &format!(
            "cookie: {{secret: '{}', previous_secrets: ['{}']}}",
            b64(new_key),
            b64(key)
        ),
    ));
    assert_eq!(proxy.url, format!("http://127.0.0.1:{port}"));
    let browser = browser.reconnect();
    assert_eq!(
        browser.fetch("/echo").await.status(),
        StatusCode::OK,
        "sealed under the previous key"
    );
    let refresh_token = open_session(new_key, key, &browser)["grant"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = browser.sign_out("/oauth2/sign_out").await;
    assert_eq!(out.status(), StatusCode::FOUND);
    assert!(chunks(&browser).is_empty(), "every chunk is cleared");
    let revoked = provider.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["reason"], "revocation_endpoint");
    let answer = provider
        .post(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
                ("client_id", "rp"),
                ("client_secret", secret),
            ],
        )
        .await;
    assert_eq!(
        answer.error(),
        "invalid_grant",
        "the signed-out session is dead at the provider"
    );
}

#[tokio::test]
async fn a_standalone_proxy_keeps_its_sessions_in_its_own_database() {
    let upstream = Upstream::start().await;
    let port = crate::cluster::free_port();
    let callback = format!("http://127.0.0.1:{port}/oauth2/callback");
    let secret = "rp secret for the database test";
    let provider = provider_with_client(3, &callback, secret).await;
    let yaml = format!(
        "storage: {{url: 'sqlite://proxy.db'}}
proxy:
  listen: 127.0.0.1:{port}
  routes: [{{upstream: '{upstream}'}}]
  provider: {{issuer: '{issuer}', client_id: rp, client_secret: '{secret}', certificate_authority: '{ca}'}}
",
        upstream = upstream.url(),
        issuer = provider.issuer,
        ca = provider.ca.display(),
    );
    let proxy = StandaloneProxy::start(&yaml);
    let browser = ProxyBrowser::new(&provider, &proxy.url);
    assert_eq!(browser.log_in("/").await, "/");
    let cookies = chunks(&browser);
    assert_eq!(cookies.len(), 1, "one cookie: {cookies:?}");
    assert!(cookies[0].1.starts_with("tsp1_"), "an opaque handle");
    let echo: Value = browser.fetch("/echo").await.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "dev");
    assert_eq!(
        echo["headers"]["authorization"],
        Value::Null,
        "no pass_access_token"
    );
    assert!(
        proxy._dir.path().join("proxy.db").exists(),
        "the session lives in the proxy's database"
    );
    let out = browser.sign_out("/oauth2/sign_out").await;
    assert_eq!(out.status(), StatusCode::FOUND);
    let revoked = provider.audit_events("SessionRevoked", 1).await;
    assert_eq!(revoked[0]["client_id"], "rp");
}
