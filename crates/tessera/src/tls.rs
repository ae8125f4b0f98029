//! TLS for the listener: rustls with the aws-lc-rs provider, HTTP/2 and HTTP/1.1 by ALPN.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::ServerConfig;

/// Loads a certificate chain and key from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let mut certs_file = BufReader::new(
        File::open(cert)
            .with_context(|| format!("cannot open the TLS certificate {}", cert.display()))?,
    );
    let certs = rustls_pemfile::certs(&mut certs_file)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    // The key is the server's identity: refuse one other users can read, as the database.
    crate::file_mode::require_private(&[key])?;
    let mut key_file = BufReader::new(
        File::open(key).with_context(|| format!("cannot open the TLS key {}", key.display()))?,
    );
    let key = rustls_pemfile::private_key(&mut key_file)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
