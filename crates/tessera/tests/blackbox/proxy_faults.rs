//! The proxy's internal faults as a client and an operator see them: the answer says little and
//! ends with a short correlation id; the proxy's log line carries the same id and the cause.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::write_private;

/// `tessera proxy` with its log read line by line, killed by PID when dropped.
struct LoggingProxy {
    child: Child,
    url: String,
    log: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Drop for LoggingProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoggingProxy {
    /// The proxy alone in front of the provider at `issuer`, sessions in the cookie.
    fn start(issuer: &str) -> LoggingProxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tessera.yaml");
        write_private(
            &config,
            format!(
                "proxy:
  routes: [{{upstream: 'http://127.0.0.1:1'}}]
  session: {{store: cookie}}
  cookie: {{secret: 'BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU='}}
  provider: {{issuer: '{issuer}', client_id: rp, client_secret: s}}
"
            ),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["proxy", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("TESSERA_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut announced = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut announced)
            .unwrap();
        let url = announced
            .trim()
            .strip_prefix("proxy listening on ")
            .unwrap_or_else(|| panic!("tessera proxy announces its address, not {announced:?}"))
            .to_owned();
        LoggingProxy {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    /// The first log line that contains `text`, waiting for it up to ten seconds.
    fn line_with(&self, text: &str) -> String {
        let mut seen = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(10)) {
            if line.contains(text) {
                return line;
            }
            seen.push(line);
        }
        panic!("no log line contains {text:?}; the log was: {seen:#?}");
    }
}

/// The correlation id that ends a fault's description.
fn correlation_id(description: &str) -> &str {
    let id = description
        .strip_suffix(')')
        .and_then(|d| d.rsplit_once("(correlation id "))
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("no correlation id in {description:?}"));
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id
}

#[tokio::test]
async fn a_failing_provider_answers_502_with_a_correlation_id_that_is_in_the_proxys_log() {
    // A provider that answers every request, discovery included, with 503.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let provider = axum::Router::new().fallback(|| async { StatusCode::SERVICE_UNAVAILABLE });
    let provider = tokio::spawn(async move { axum::serve(listener, provider).await });
    let proxy = LoggingProxy::start(&issuer);

    // Plain HTTP on loopback; reqwest still wants a TLS configuration with its crypto provider.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let answer = http
        .get(format!("{}/oauth2/start?rd=/", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(
            "the identity provider cannot be reached; try again shortly (correlation id "
        ),
        "{description}"
    );
    let id = correlation_id(description);
    let line = proxy.line_with(id);
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("the provider failed"), "{line}");
    assert!(line.contains(&format!("correlation_id={id}")), "{line}");
    provider.abort();
}
