//! TLS to PostgreSQL, as libpq takes it from the URL: `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` query parameters. This module reads them (refusing what tessera cannot honour the
//! way libpq would), hands them to sqlx, and turns a failed handshake into one sentence that
//! names the parameter to fix.
//!
//! Where sqlx differs from libpq, libpq wins:
//! - `sslmode=require` with an `sslrootcert` verifies the CA, as libpq does (sqlx would not).
//! - `verify-ca` and `verify-full` need `sslrootcert`: libpq would fall back to
//!   `~/.postgresql/root.crt`, sqlx to the public web CAs; tessera asks for a file, or
//!   `sslrootcert=system` to trust the public web CAs on purpose.
//! - `sslmode=allow` is refused: sqlx never tries TLS with it.
//!
//! Where sqlx is stricter than libpq, it stays so: its `verify-ca` checks the host name as well
//! (it forgives only the name error rustls used to report, not the one it reports now).
//!
//! One difference remains: sqlx trusts the public web CAs (Mozilla's list, `webpki-roots`) in
//! addition to the `sslrootcert` file, so a server certificate from a public CA passes
//! `verify-ca`, and passes `verify-full` when it names the host. The README says so.

use std::fmt;
use std::path::{Path, PathBuf};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::StoreError;

/// The `sslmode`s tessera takes (libpq's, less `allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS or no connection, without checking the certificate.
    Require,
    /// TLS, with a certificate signed by a CA in `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host the URL connects to.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        match text.to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err("sslmode=allow is not supported, because it connects \
                 without TLS whenever the server lets it; use sslmode=verify-full (or require, \
                 prefer, disable)"
                .to_owned()),
            other => Err(format!(
                "sslmode={other} is not one of disable, prefer, require, \
                 verify-ca, verify-full"
            )),
        }
    }

    /// The parameter's value, as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    fn sqlx(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// What the server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// No `sslrootcert`: nothing is checked (only allowed below `verify-ca`).
    Unset,
    /// `sslrootcert=PATH`: the CA certificates in this PEM file.
    File(PathBuf),
    /// `sslrootcert=system`: the public web CAs (Mozilla's list), as libpq's `system`.
    System,
}

/// The TLS settings of a PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    /// The `sslmode` in force: `require` with an `sslrootcert` file is `verify-ca`, as in libpq.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: RootCert,
    /// `sslcert`: the client's certificate chain (PEM), for `cert` authentication.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM), private to tessera's user.
    pub client_key: Option<PathBuf>,
}

impl PostgresTls {
    /// The files the settings name, each with its parameter: tessera checks at start that
    /// each can be read (and that `sslkey` is private).
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = Vec::new();
        if let RootCert::File(path) = &self.root_cert {
            files.push(("sslrootcert", path.as_path()));
        }
        if let Some(path) = &self.client_cert {
            files.push(("sslcert", path.as_path()));
        }
        if let Some(path) = &self.client_key {
            files.push(("sslkey", path.as_path()));
        }
        files
    }
}

/// The URL's TLS parameters removed from it (sqlx gets them from [`apply`] instead), and read.
/// A refusal names the parameter, not `storage.url`: the configuration adds the key.
pub(super) fn split(url: &str) -> Result<(String, PostgresTls), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let (mut mode, mut root, mut cert, mut key) = (None, None, None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // sqlx's spellings too, so none of them slips past the checks here.
        let slot = match name {
            "sslmode" | "ssl-mode" => &mut mode,
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => &mut root,
            "sslcert" | "ssl-cert" => &mut cert,
            "sslkey" | "ssl-key" => &mut key,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        *slot = Some(percent_decode(value)?);
    }
    let root_cert = match root.as_deref() {
        None | Some("") => RootCert::Unset,
        Some("system") => RootCert::System,
        Some(path) => RootCert::File(PathBuf::from(path)),
    };
    let mode = match mode.as_deref() {
        None | Some("") => SslMode::Prefer,
        Some(text) => SslMode::parse(text)?,
    };
    let mode = match (mode, &root_cert) {
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        (SslMode::Require, RootCert::File(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    if mode.verifies() && root_cert == RootCert::Unset {
        return Err(format!(
            "sslmode={} needs sslrootcert=PATH naming the CA file that signed the \
             server's certificate (or sslrootcert=system for the public web CAs)",
            mode.as_str()
        ));
    }
    let tls = PostgresTls {
        mode,
        root_cert,
        client_cert: cert.filter(|c| !c.is_empty()).map(PathBuf::from),
        client_key: key.filter(|k| !k.is_empty()).map(PathBuf::from),
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), None) => {
            return Err("sslcert needs sslkey, the file with the \
             certificate's private key"
                .to_owned());
        }
        (None, Some(_)) => {
            return Err("sslkey needs sslcert, the file with the \
             client certificate"
                .to_owned());
        }
        _ => {}
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

/// `connect` with the TLS settings: what sqlx is told replaces anything it read itself (from
/// `PGSSL*` environment variables, say).
pub(super) fn apply(connect: PgConnectOptions, tls: &PostgresTls) -> PgConnectOptions {
    let mut connect = connect.ssl_mode(tls.mode.sqlx());
    if let RootCert::File(path) = &tls.root_cert {
        connect = connect.ssl_root_cert(path);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        connect = connect.ssl_client_cert(cert).ssl_client_key(key);
    }
    connect
}

/// The server a URL connects to, and its TLS settings: enough to explain a failed handshake.
#[derive(Clone, Debug)]
pub(super) struct TlsContext {
    pub(super) tls: PostgresTls,
    pub(super) host: String,
    pub(super) port: u16,
}

impl TlsContext {
    /// `error` as [`StoreError::Tls`] when it is a failed TLS handshake, else unchanged.
    pub(super) fn explain(&self, error: StoreError) -> StoreError {
        let StoreError::Unavailable { source } = &error else {
            return error;
        };
        match source
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| self.sentence(e))
        {
            Some(reason) => StoreError::Tls { reason },
            None => error,
        }
    }

    fn sentence(&self, error: &sqlx::Error) -> Option<String> {
        let server = format!("the PostgreSQL server at {}:{}", self.host, self.port);
        match error {
            // sqlx's own words when the server answers "N" to the SSLRequest.
            sqlx::Error::Tls(e) if e.to_string() == "server does not support TLS" => Some(format!(
                "storage.url: {server} does not offer TLS, and sslmode={} requires it; \
                     turn on ssl in the server's postgresql.conf",
                self.tls.mode.as_str()
            )),
            sqlx::Error::Tls(e) => rustls_error(e.as_ref())
                .map(|e| self.handshake(&server, e))
                .or_else(|| Some(format!("storage.url: TLS to {server} failed: {e}"))),
            // A handshake failure reaches sqlx as an I/O error wrapping rustls's.
            sqlx::Error::Io(e) => e
                .get_ref()
                .and_then(|inner| rustls_error(inner))
                .map(|e| self.handshake(&server, e)),
            _ => None,
        }
    }

    fn handshake(&self, server: &str, error: &rustls::Error) -> String {
        use rustls::CertificateError as C;
        let trusted = match &self.tls.root_cert {
            RootCert::File(path) => format!("the CA in sslrootcert={}", path.display()),
            RootCert::System => "any public web CA (sslrootcert=system)".to_owned(),
            RootCert::Unset => "a CA tessera trusts".to_owned(),
        };
        match error {
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                "storage.url: {server} presented a certificate that is not signed by {trusted}; \
                 name the CA that signed the server's certificate in sslrootcert"
            ),
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) if self.tls.mode == SslMode::VerifyFull => format!(
                "storage.url: {server} presented a certificate that is not issued for the host \
                 name {}, which sslmode=verify-full requires; connect by a name the \
                 certificate holds",
                self.host
            ),
            // sqlx's verify-ca forgives only rustls's older NotValidForName, and rustls now
            // reports NotValidForNameContext: the name is checked under verify-ca too.
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => format!(
                "storage.url: {server} presented a certificate that is not issued for the host \
                 name {}, and tessera checks the name under sslmode={} too; connect by a name \
                 the certificate holds",
                self.host,
                self.tls.mode.as_str()
            ),
            rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => format!(
                "storage.url: {server} presented a certificate that has expired or is not valid \
                 yet, so sslmode={} refuses it",
                self.tls.mode.as_str()
            ),
            rustls::Error::AlertReceived(alert) if self.tls.client_cert.is_some() => format!(
                "storage.url: {server} ended the TLS handshake ({alert:?}); check that sslcert \
                 and sslkey hold a client certificate its ssl_ca_file trusts"
            ),
            other => format!("storage.url: TLS to {server} failed: {other}"),
        }
    }
}

fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>()
}

/// A query value's percent escapes (and `+` for a space, as URL forms have it) decoded.
fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("`{value}` has a broken % escape"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{value}` is not UTF-8"))
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn tls(url: &str) -> Result<PostgresTls, String> {
        split(url).map(|(_, tls)| tls)
    }

    #[test]
    fn tls_parameters_leave_the_url_and_the_others_stay() {
        let (url, tls) = split(
            "postgres://u@db/t?application_name=x&sslmode=verify-full&sslrootcert=%2Fca%20dir%2Fca.crt",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@db/t?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, RootCert::File("/ca dir/ca.crt".into()));
    }

    #[test]
    fn without_sslmode_tls_is_preferred_as_libpq_does() {
        let (url, tls) = split("postgres://u@db/t").unwrap();
        assert_eq!(url, "postgres://u@db/t");
        assert_eq!(tls.mode, SslMode::Prefer);
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_ca_as_libpq_does() {
        let tls = tls("postgres://u@db/t?sslmode=require&sslrootcert=/ca.crt").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
    }

    #[test]
    fn allow_is_refused_with_a_sentence() {
        let e = tls("postgres://u@db/t?sslmode=allow").unwrap_err();
        assert!(e.starts_with("sslmode=allow is not supported"), "{e}");
    }

    #[test]
    fn verification_without_a_root_certificate_is_refused_unless_system_is_named() {
        let e = tls("postgres://u@db/t?sslmode=verify-full").unwrap_err();
        assert!(e.contains("needs sslrootcert=PATH"), "{e}");
        let system = tls("postgres://u@db/t?sslmode=verify-full&sslrootcert=system").unwrap();
        assert_eq!(system.root_cert, RootCert::System);
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = tls("postgres://u@db/t?sslmode=require&sslcert=/c.crt").unwrap_err();
        assert!(e.contains("sslcert needs sslkey"), "{e}");
        let both = tls("postgres://u@db/t?sslmode=require&sslcert=/c.crt&sslkey=/c.key").unwrap();
        assert_eq!(
            both.files(),
            [
                ("sslcert", Path::new("/c.crt")),
                ("sslkey", Path::new("/c.key"))
            ]
        );
    }

    #[test]
    fn an_unknown_sslmode_names_the_choices() {
        let e = tls("postgres://u@db/t?sslmode=maybe").unwrap_err();
        assert!(e.contains("not one of disable, prefer, require"), "{e}");
    }
}
