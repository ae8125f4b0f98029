//! The `tls:` section: the provider's certificate and key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Invalid;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    /// PEM certificate chain served to clients.
    cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    key_file: Option<PathBuf>,
}

/// Both files, relative to `base`, or neither.
pub(super) fn validate(raw: RawTls, base: &Path) -> Result<Option<(PathBuf, PathBuf)>, Invalid> {
    match (raw.cert_file, raw.key_file) {
        (Some(cert), Some(key)) => Ok(Some((base.join(cert), base.join(key)))),
        (None, None) => Ok(None),
        _ => Err(("tls".into(), "set both cert_file and key_file".into())),
    }
}
