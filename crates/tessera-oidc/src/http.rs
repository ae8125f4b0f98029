//! The HTTPS client a relying party talks to its provider with: rustls trusting either a given
//! CA bundle or the system's roots, a bounded time per request, and no redirects (an OAuth
//! endpoint that redirects is misconfigured, and following it could send a secret elsewhere).
//! Also the two ways an answer is read: a JSON document, and an OAuth error body.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// How long one HTTP request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTPS client trusting `ca_file` (PEM), or the system's roots when there is none.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, Error> {
    client_with(tls_client_config(ca_file)?)
}

/// A TLS client configuration trusting `ca_file` (PEM), or the system's roots when there is
/// none: what the HTTPS client uses, and what other protocols to the same kind of upstream
/// (LDAP's `ldaps://` and StartTLS) use too.
pub fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let roots = match ca_file {
        Some(file) => bundle_roots(file)?,
        None => system_roots()?,
    };
    config_trusting(roots)
}

fn config_trusting(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::HttpClient {
            what: "TLS protocol versions",
            reason: error_chain(&e),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTPS client trusting exactly `roots`.
#[cfg(test)]
pub(crate) fn client_trusting(roots: rustls::RootCertStore) -> Result<reqwest::Client, Error> {
    client_with(config_trusting(roots)?)
}

fn client_with(tls: rustls::ClientConfig) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::HttpClient {
            what: "cannot build the HTTPS client",
            reason: error_chain(&e),
        })
}

/// GETs `url` and reads its JSON answer as `T`.
pub async fn get_json<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T, Error> {
    let (status, body) = answer(http.get(url), url).await?;
    if !status.is_success() {
        return Err(Error::Status {
            url: url.to_owned(),
            status,
            description: describe_error_body(&body),
        });
    }
    serde_json::from_slice(&body).map_err(|e| Error::UnexpectedAnswer {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// Sends `request` to `url` and reads the whole answer.
pub(crate) async fn answer(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<(reqwest::StatusCode, Vec<u8>), Error> {
    let response = request.send().await.map_err(|e| Error::Unreachable {
        url: url.to_owned(),
        reason: error_chain(&e),
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| Error::UnreadableAnswer {
            url: url.to_owned(),
            reason: error_chain(&e),
        })?;
    Ok((status, body.to_vec()))
}

/// `error_description` (or `error`) of an OAuth error body (RFC 6749 §5.2), or the body's start.
pub(crate) fn describe_error_body(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (json["error"].as_str(), json["error_description"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_owned(),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// An error with its causes, which say what actually went wrong (refused, TLS, …).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The certificates of a PEM bundle; an error when none is usable.
fn bundle_roots(file: &Path) -> Result<rustls::RootCertStore, Error> {
    let pem = std::fs::read(file).map_err(|e| Error::CaBundleUnreadable {
        path: file.to_owned(),
        reason: e.to_string(),
    })?;
    let unusable = |reason: String| Error::CaBundleUnusable {
        path: file.to_owned(),
        reason,
    };
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("not PEM: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(unusable("no certificate".into()));
    }
    Ok(roots)
}

/// The system's trusted roots; an error when there are none.
fn system_roots() -> Result<rustls::RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::NoSystemRoots);
    }
    Ok(roots)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn an_oauth_error_body_is_described_by_its_error_and_description() {
        let body = br#"{"error":"invalid_grant","error_description":"spent"}"#;
        assert_eq!(describe_error_body(body), "invalid_grant: spent");
        assert_eq!(
            describe_error_body(br#"{"error":"invalid_client"}"#),
            "invalid_client"
        );
        let html = "<html>".repeat(100);
        assert_eq!(describe_error_body(html.as_bytes()), &html[..200]);
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("empty.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let error = http_client(Some(&file)).unwrap_err();
        assert_eq!(
            error,
            Error::CaBundleUnusable {
                path: file.clone(),
                reason: "no certificate".into()
            }
        );
        assert!(error.to_string().starts_with(&file.display().to_string()));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            http_client(Some(&missing)),
            Err(Error::CaBundleUnreadable { .. })
        ));
    }
}
