//! `tessera serve --dev`: everything a first try needs, in one data directory. Each file is
//! created only when missing, so a second start reuses all of it.
//!
//! Layout: `tessera.yaml`, `ca.pem` (the CA to trust) and its key, `server.pem` and its key
//! (127.0.0.1, localhost, ::1), `users.yaml` (user `dev`), `demo-client-secret`, `tessera.db`,
//! `audit.log`. The directory is 0700 and every file in it 0600 but the two certificates, which
//! are public; `serve` refuses a configuration, users file or database others can read.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tessera_core::clock::{Clock, SystemClock};

use crate::secret::{hash_password, sha256_secret_hash};
use crate::users::{User, UsersFile};

/// What the dev set-up produced and has to tell the user once.
pub struct DevSetup {
    /// The configuration file to serve from.
    pub config_path: PathBuf,
    /// The CA certificate clients should trust.
    pub ca_path: PathBuf,
    /// Secrets generated now, printed this one time only.
    pub announcements: Vec<String>,
}

/// Creates whatever of the data directory is missing.
pub fn prepare(data_dir: &Path, dev_password: Option<String>) -> Result<DevSetup> {
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict the permissions of {}", data_dir.display()))?;
    let files = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"];
    if files.iter().any(|f| !data_dir.join(f).exists()) {
        write_certificates(data_dir)?;
    }
    let mut announcements = Vec::new();
    let users_path = data_dir.join("users.yaml");
    if !users_path.exists() {
        announcements.push(write_users(&users_path, dev_password)?);
    }
    let config_path = data_dir.join("tessera.yaml");
    if !config_path.exists() {
        announcements.extend(write_config(data_dir, &config_path)?);
    }
    Ok(DevSetup {
        config_path,
        ca_path: data_dir.join("ca.pem"),
        announcements,
    })
}

/// Writes the users file with user `dev`, whose password is `dev_password` or a random one;
/// the line that tells the user about it.
fn write_users(path: &Path, dev_password: Option<String>) -> Result<String> {
    let (password, generated) = match dev_password {
        Some(p) if !p.is_empty() => (p, false),
        _ => (random_text(18), true),
    };
    let users = UsersFile {
        users: vec![User {
            username: "dev".into(),
            password_hash: hash_password(&password)
                .map_err(|e| anyhow::anyhow!("cannot hash the dev password: {e}"))?,
            email: Some("dev@example.com".into()),
            groups: vec!["dev".into(), "system:authenticated".into()],
        }],
    };
    write_private(path, &yaml_serde::to_string(&users)?)?;
    Ok(if generated {
        format!("user `dev`, password (shown once): {password}")
    } else {
        "user `dev`, password from TESSERA_DEV_PASSWORD".into()
    })
}

/// Writes the configuration, with the hash of client `demo`'s secret: the one already in the
/// data directory, or a new one, which the line returned shows once.
fn write_config(data_dir: &Path, config_path: &Path) -> Result<Option<String>> {
    let secret_path = data_dir.join("demo-client-secret");
    let (secret, announcement) = match fs::read_to_string(&secret_path) {
        Ok(existing) => (existing.trim().to_owned(), None),
        Err(_) => {
            let secret = random_text(32);
            write_private(&secret_path, &secret)?;
            let announcement = format!(
                "client `demo` secret (shown once, also in {}): {secret}",
                secret_path.display()
            );
            (secret, Some(announcement))
        }
    };
    write_private(config_path, &dev_config(&sha256_secret_hash(&secret)))?;
    Ok(announcement)
}

fn dev_config(demo_secret_hash: &str) -> String {
    format!(
        "# Written by `tessera serve --dev`. Every key is optional; see the README for all of them.\n\
         # The issuer follows the bound address unless `issuer:` is set.\n\
         tls:\n  cert_file: server.pem\n  key_file: server-key.pem\n\
         storage:\n  url: sqlite://tessera.db\n\
         audit:\n  output: audit.log\n\
         users:\n  file: users.yaml\n\
         tokens:\n  id_token_ttl: 60s\n  access_token_ttl: 60s\n  signing_alg: RS256\n\
         refresh_token:\n  ttl: 15m\n  grace_period_millis: 0\n  grace_requires_same_ip: false\n  on_replay: revoke_session\n\
         session:\n  max_lifetime: 12h\n\
         # The cluster `tessera login` writes into kubeconfigs; point `server` at your API server.\n\
         kubernetes:\n  cluster_name: tessera-dev\n  server: https://127.0.0.1:6443\n  client_id: kubernetes\n\
         clients:\n\
         \x20 - id: kubernetes\n    public: true\n    redirect_uris: [\"http://127.0.0.1/callback\", \"http://localhost/callback\"]\n\
         \x20 - id: demo\n    secret_hash: \"{demo_secret_hash}\"\n    redirect_uris: [\"http://127.0.0.1:8000/callback\"]\n    post_logout_redirect_uris: [\"http://127.0.0.1:8000/\"]\n"
    )
}

/// Writes a new development CA and a server certificate it signs, with their keys.
fn write_certificates(dir: &Path) -> Result<()> {
    let now = SystemClock.now();
    let now = time::OffsetDateTime::from_unix_timestamp(now.as_secs())
        .context("the system clock is out of range")?;
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca = ca_params(now)?;
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the CA")?;
    let issuer = Issuer::new(ca, &ca_key);
    let server_key = KeyPair::generate().context("cannot generate the server key")?;
    let server_cert = server_params(now)?
        .signed_by(&server_key, &issuer)
        .context("cannot sign the server certificate")?;
    write_private(&dir.join("ca-key.pem"), &ca_key.serialize_pem())?;
    write_private(&dir.join("server-key.pem"), &server_key.serialize_pem())?;
    fs::write(dir.join("server.pem"), server_cert.pem())?;
    fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    Ok(())
}

/// The development CA: signs certificates only, valid ten years from yesterday.
fn ca_params(now: time::OffsetDateTime) -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("cannot build the CA")?;
    ca.distinguished_name
        .push(DnType::CommonName, "tessera development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(3650);
    Ok(ca)
}

/// The server certificate: 127.0.0.1, localhost and ::1, for serving TLS only.
fn server_params(now: time::OffsetDateTime) -> Result<CertificateParams> {
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "::1".to_owned(),
    ])
    .context("cannot build the server certificate")?;
    server
        .distinguished_name
        .push(DnType::CommonName, "tessera");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now - time::Duration::days(1);
    // Browsers refuse leaf certificates valid for more than 398 days.
    server.not_after = now + time::Duration::days(397);
    Ok(server)
}

/// Writes a file readable by its owner only (mode 0600), replacing nothing that exists.
fn write_private(path: &Path, content: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

fn random_text(bytes: usize) -> String {
    use base64::Engine as _;
    let random: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
}
