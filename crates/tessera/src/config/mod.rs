//! Configuration: one YAML file (`tessera.yaml`), every key with a default, overridable by
//! `TESSERA_<SECTION>__<KEY>` environment variables. Raw serde structs mirror the file and refuse
//! unknown keys; [`Config`] is the validated form the rest of the program receives.

mod admin;
mod audit;
mod clients;
mod connectors;
mod environment;
mod http;
mod keys;
mod kubernetes;
mod login;
pub mod proxy;
mod refresh_token;
mod session;
mod storage;
mod tls;
mod tokens;
mod users;
mod web;

pub use clients::Client;
pub use connectors::{
    ClaimNames, ConnectorConfig, ConnectorKind, GroupMapping, GroupSearch, LdapConfig, OidcConfig,
    UserMatcher, UserSearch,
};
pub use kubernetes::KubeCluster;
pub use storage::Storage;
pub use web::{Logo, Web};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::jwt::Algorithm;
use tessera_core::redeem::RedeemPolicy;

use self::proxy::ProxyConfig;
use crate::listener::Limits;

/// A configuration problem, always naming the key (and the line, when it came from the file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read {path}: {reason}; pass an existing file with --config or run `tessera serve --dev`"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why. Not a `source`: the message already says it, and `{:#}` would repeat it.
        reason: std::io::Error,
    },
    /// The file is not YAML, or a key is unknown or has the wrong type.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key's path and line.
        message: String,
    },
    /// Other users may read or write the file.
    #[error(transparent)]
    Exposed(#[from] crate::file_mode::Exposed),
    /// A value is out of range or malformed.
    #[error("{path}: `{key}`: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key's path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Raw file layout. Field comments double as the configuration reference.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    /// Issuer URL; unset: `https://<bound address>`.
    issuer: Option<String>,
    /// Address to listen on (default `127.0.0.1:8443`).
    listen: Option<String>,
    tls: tls::RawTls,
    tokens: tokens::RawTokens,
    refresh_token: refresh_token::RawRefreshToken,
    session: session::RawSession,
    audit: audit::RawAudit,
    /// Who may use the admin API.
    admin: admin::RawAdmin,
    clients: Vec<clients::RawClient>,
    users: users::RawUsers,
    /// Where people come from; unset: the users file alone.
    connectors: Option<Vec<connectors::RawConnector>>,
    /// How every connector's groups are mapped.
    groups: connectors::RawGroups,
    storage: storage::RawStorage,
    login: login::RawLogin,
    keys: keys::RawKeys,
    kubernetes: Option<kubernetes::RawKubernetes>,
    http: http::RawHttp,
    /// The name and logo on the pages people sign in and out at.
    web: web::RawWeb,
    /// The authenticating reverse proxy (optional).
    proxy: Option<proxy::RawProxy>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Explicit issuer, if set.
    pub issuer: Option<String>,
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS certificate and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// id_token lifetime.
    pub id_token_ttl: Duration,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// id_token algorithm.
    pub signing_alg: Algorithm,
    /// Access token algorithm.
    pub access_token_alg: Algorithm,
    /// Refresh token lifetime (sliding).
    pub refresh_ttl: Duration,
    /// The redeem policy.
    pub policy: RedeemPolicy,
    /// Absolute session lifetime.
    pub session_max_lifetime: Duration,
    /// How long an SSO session may go unused and still answer `/authorize` silently.
    pub sso_idle_timeout: Duration,
    /// Audit output: `None` is stdout.
    pub audit_file: Option<PathBuf>,
    /// Groups whose members may use the admin API; empty: nobody.
    pub admin_groups: Vec<String>,
    /// Clients by id.
    pub clients: HashMap<String, Client>,
    /// Users file.
    pub users_file: Option<PathBuf>,
    /// The connectors, in the login page's order.
    pub connectors: Vec<ConnectorConfig>,
    /// The mapping applied to every connector's groups.
    pub group_mapping: GroupMapping,
    /// Where sessions and keys live.
    pub storage: Storage,
    /// Failed logins allowed per user and per IP in a window.
    pub login_max_failures: u32,
    /// The failure-counting window.
    pub login_failure_window: Duration,
    /// Automatic signing key rotation age.
    pub key_rotation_interval: Duration,
    /// Key reload interval.
    pub key_reload_interval: Duration,
    /// The cluster published to `tessera login`, if configured.
    pub kubernetes: Option<KubeCluster>,
    /// Peers whose `X-Forwarded-For` names the client (load balancers in front of replicas).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Timeouts and connection caps of both listeners.
    pub limits: Limits,
    /// How long a stopping process may take to drain its connections (`http.shutdown_grace`).
    pub shutdown_grace: Duration,
    /// The authenticating reverse proxy, if configured.
    pub proxy: Option<ProxyConfig>,
    /// The name and logo on the provider's pages.
    pub web: Web,
}

impl Config {
    /// Loads `path`, applies `TESSERA_*` overrides from `env`, and validates. A file that other
    /// users may read or write is refused: it may hold client secrets, their hashes and the
    /// proxy's cookie secret.
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        crate::file_mode::require_private(&[path])?;
        let raw = raw_config(&text, env).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        validate(raw, path, env)
    }
}

/// The file's text as [`RawConfig`], with the `TESSERA_*` overrides of `env` applied; the
/// error names the key (and the line, when the file's own text is wrong).
fn raw_config(text: &str, env: &[(String, String)]) -> Result<RawConfig, String> {
    // First straight from the text, so errors carry line numbers.
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| describe(&e))?
    };
    let overrides = environment::overrides(env);
    if overrides.is_empty() {
        return Ok(raw);
    }
    environment::apply(text, &overrides)
}

fn describe(e: &serde_path_to_error::Error<yaml_serde::Error>) -> String {
    let key = e.path().to_string();
    if key == "." || key.is_empty() {
        e.inner().to_string()
    } else {
        format!("`{key}`: {}", e.inner())
    }
}

/// A value's problem: the key's path and what is wrong. [`validate`] adds the file.
type Invalid = (String, String);

/// Validates the sections and assembles the [`Config`]; paths in it are relative to the
/// file's folder, and an error names the file.
fn validate(raw: RawConfig, path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let sections = raw
        .validate(base, env)
        .map_err(|(key, message)| ConfigError::Value {
            path: path.to_owned(),
            key,
            message,
        })?;
    Ok(sections.into_config(path))
}

/// Every section of the file, each validated by its own module: what a [`Config`] is
/// assembled from.
struct Sections {
    listen: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    issuer: Option<String>,
    tokens: tokens::Tokens,
    refresh_token: refresh_token::RefreshToken,
    clients: HashMap<String, Client>,
    storage: Storage,
    kubernetes: Option<KubeCluster>,
    http: http::Http,
    proxy: Option<ProxyConfig>,
    session: session::SessionLimits,
    login: login::Login,
    keys: keys::Keys,
    audit_file: Option<PathBuf>,
    admin_groups: Vec<String>,
    users_file: Option<PathBuf>,
    connectors: Vec<ConnectorConfig>,
    group_mapping: GroupMapping,
    web: Web,
}

impl RawConfig {
    /// Checks each section in turn, in the order of [`Sections`]' fields: the first problem is
    /// the one reported.
    fn validate(self, base: &Path, env: &[(String, String)]) -> Result<Sections, Invalid> {
        let listen = listen(self.listen.as_deref())?;
        let tls = tls::validate(self.tls, base)?;
        let issuer = self.issuer.as_deref().map(issuer).transpose()?;
        let tokens = tokens::validate(&self.tokens)?;
        let refresh_token = refresh_token::validate(&self.refresh_token)?;
        let clients = clients::validate(self.clients)?;
        let storage = storage::validate(self.storage, base, env)?;
        let kubernetes = self
            .kubernetes
            .map(|k| kubernetes::validate(k, &clients, base))
            .transpose()?;
        let users_file = users::validate(self.users, base);
        let connectors = connectors::validate(self.connectors, users_file.as_deref(), base)?;
        Ok(Sections {
            listen,
            tls,
            issuer,
            tokens,
            refresh_token,
            clients,
            storage,
            kubernetes,
            http: http::validate(&self.http)?,
            proxy: self.proxy.map(|p| proxy::validate(p, base)).transpose()?,
            session: session::validate(&self.session)?,
            login: login::validate(&self.login)?,
            keys: keys::validate(&self.keys)?,
            audit_file: audit::validate(&self.audit, base),
            admin_groups: admin::validate(self.admin)?,
            users_file,
            connectors,
            group_mapping: connectors::validate_groups(self.groups)?,
            web: web::validate(self.web, base)?,
        })
    }
}

impl Sections {
    /// The flat [`Config`] the rest of the program reads.
    fn into_config(self, path: &Path) -> Config {
        Config {
            path: path.to_owned(),
            issuer: self.issuer,
            listen: self.listen,
            tls: self.tls,
            id_token_ttl: self.tokens.id_token_ttl,
            access_token_ttl: self.tokens.access_token_ttl,
            signing_alg: self.tokens.signing_alg,
            access_token_alg: self.tokens.access_token_alg,
            refresh_ttl: self.refresh_token.ttl,
            policy: self.refresh_token.policy,
            session_max_lifetime: self.session.max_lifetime,
            sso_idle_timeout: self.session.sso_idle_timeout,
            audit_file: self.audit_file,
            admin_groups: self.admin_groups,
            clients: self.clients,
            users_file: self.users_file,
            connectors: self.connectors,
            group_mapping: self.group_mapping,
            storage: self.storage,
            login_max_failures: self.login.max_failures,
            login_failure_window: self.login.failure_window,
            key_rotation_interval: self.keys.rotation_interval,
            key_reload_interval: self.keys.reload_interval,
            kubernetes: self.kubernetes,
            trusted_proxies: self.http.trusted_proxies,
            limits: self.http.limits,
            shutdown_grace: self.http.shutdown_grace,
            proxy: self.proxy,
            web: self.web,
        }
    }
}

/// The top-level `listen` key (default `127.0.0.1:8443`).
fn listen(text: Option<&str>) -> Result<SocketAddr, Invalid> {
    let text = text.unwrap_or("127.0.0.1:8443");
    text.parse().map_err(|_| {
        (
            "listen".into(),
            format!("`{text}` is not an address like 127.0.0.1:8443"),
        )
    })
}

/// The top-level `issuer` key, without its trailing `/`.
fn issuer(text: &str) -> Result<String, Invalid> {
    let url = url::Url::parse(text).map_err(|e| ("issuer".to_owned(), format!("{e}")))?;
    if url.scheme() != "https" || url.query().is_some() || url.fragment().is_some() {
        return Err((
            "issuer".into(),
            "must be an https URL without query or fragment (OpenID Connect Discovery §3)".into(),
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// A duration-valued key.
fn duration(key: &str, text: &str) -> Result<Duration, Invalid> {
    parse_duration(text).map_err(|m| (key.to_owned(), m))
}

/// Parses `500ms`, `60s`, `15m`, `12h`, `30d` (the kubectl client reads `--lock-timeout` alike).
pub use tessera_core::duration::parse_duration;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use tessera_core::redeem::OnReplay;

    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        load_in(dir.path(), yaml, env)
    }

    /// Writes `tessera.yaml` (mode 0600) into `dir` and loads it.
    fn load_in(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let path = dir.join("tessera.yaml");
        write_with_mode(&path, yaml, 0o600);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&path, &env)
    }

    fn write_with_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_config_file_others_can_read_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.yaml");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            write_with_mode(&path, "", mode);
            let err = Config::load(&path, &[]).unwrap_err();
            assert!(matches!(err, ConfigError::Exposed(_)), "{err}");
            let said = err.to_string();
            assert!(said.contains(&format!("(mode {mode:04o})")), "{said}");
            assert!(
                said.contains(&format!("chmod 600 {}", path.display())),
                "{said}"
            );
        }
        write_with_mode(&path, "", 0o400);
        assert!(Config::load(&path, &[]).is_ok(), "read-only for the owner");
    }

    #[test]
    fn a_postgres_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        write_with_mode(&password, "s3cret\n", 0o644);
        let yaml = "storage:\n  url: postgres://tessera@db/tessera\n  password_file: password\n";
        let said = load_in(dir.path(), yaml, &[]).unwrap_err().to_string();
        assert!(said.contains("storage.password_file"), "{said}");
        assert!(
            said.contains(&format!("chmod 600 {}", password.display())),
            "{said}"
        );
        write_with_mode(&password, "s3cret\n", 0o600);
        let Storage::Postgres(options) = load_in(dir.path(), yaml, &[]).unwrap().storage else {
            panic!("a postgres:// URL selects PostgreSQL");
        };
        assert_eq!(options.password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn an_empty_file_means_every_default() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.id_token_ttl, Duration::from_secs(60));
        assert_eq!(c.refresh_ttl, Duration::from_secs(900));
        assert_eq!(c.session_max_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(c.policy.grace_period, Duration::ZERO);
        assert_eq!(c.policy.on_replay, OnReplay::RevokeSession);
        assert_eq!(c.signing_alg, Algorithm::RS256);
        assert_eq!(c.access_token_alg, Algorithm::ES256);
    }

    #[test]
    fn access_tokens_take_the_id_tokens_algorithm_when_it_is_already_cheap_or_rs256_when_asked() {
        let eddsa = load("tokens: {signing_alg: EdDSA}\n", &[]).unwrap();
        assert_eq!(eddsa.access_token_alg, Algorithm::EdDSA);
        let rs256 = load("tokens: {access_token_alg: RS256}\n", &[]).unwrap();
        assert_eq!(rs256.signing_alg, Algorithm::RS256);
        assert_eq!(rs256.access_token_alg, Algorithm::RS256);
    }

    #[test]
    fn postgres_storage_takes_its_password_from_the_environment_first() {
        let yaml = "storage:\n  url: postgres://tessera@db.example.com/tessera\n  pool: {max_connections: 8, connect_timeout: 2s}\n";
        let Storage::Postgres(options) = load(yaml, &[]).unwrap().storage else {
            panic!("a postgres:// URL selects PostgreSQL");
        };
        assert_eq!(options.max_connections, 8);
        assert_eq!(options.connect_timeout, Duration::from_secs(2));
        assert_eq!(options.password, None);
        let env = [("TESSERA_STORAGE_PASSWORD", "s3cret")];
        let Storage::Postgres(options) = load(yaml, &env).unwrap().storage else {
            panic!("still PostgreSQL");
        };
        assert_eq!(options.password.as_deref(), Some("s3cret"));
        assert!(
            !format!("{options:?}").contains("s3cret"),
            "Debug hides the password"
        );
    }

    #[test]
    fn an_unsupported_storage_url_names_the_key() {
        let err = load("storage:\n  url: mysql://x/y\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.url"), "{err}");
        let err = load(
            "storage:\n  url: postgres://x/y\n  pool: {max_connections: 0}\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.pool.max_connections"), "{err}");
    }

    #[test]
    fn an_unknown_key_names_its_path_and_line() {
        let err = load(
            "tokens:\n  id_token_ttl: 30s\nrefresh_token:\n  grace_period: 5\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("refresh_token"), "{err}");
        assert!(err.contains("grace_period"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn environment_overrides_apply_before_validation() {
        let c = load(
            "refresh_token:\n  grace_period_millis: 1\n",
            &[
                ("TESSERA_REFRESH_TOKEN__GRACE_PERIOD_MILLIS", "5000"),
                ("TESSERA_DEV_PASSWORD", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.policy.grace_period, Duration::from_millis(5000));
        let err = load("", &[("TESSERA_TOKENS__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load("tokens:\n  id_token_ttl: 60\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokens.id_token_ttl"), "{err}");
        let err = load("refresh_token:\n  on_replay: explode\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("refresh_token.on_replay"), "{err}");
        let err = load("clients:\n  - id: x\n", &[]).unwrap_err().to_string();
        assert!(err.contains("secret_hash"), "{err}");
    }

    #[test]
    fn listener_limits_have_defaults_and_environment_overrides() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.body_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_ip, 256);
        assert_eq!(c.shutdown_grace, Duration::from_secs(20));
        let c = load(
            "http:\n  idle_timeout: 5m\n",
            &[
                ("TESSERA_HTTP__SHUTDOWN_GRACE", "45s"),
                ("TESSERA_HTTP__HEADER_READ_TIMEOUT", "500ms"),
                ("TESSERA_HTTP__MAX_CONNECTIONS_PER_IP", "8"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.header_read_timeout, Duration::from_millis(500));
        assert_eq!(c.limits.max_connections_per_ip, 8);
        assert_eq!(c.shutdown_grace, Duration::from_secs(45));
    }

    #[test]
    fn a_zero_listener_limit_names_its_key() {
        let err = load("http:\n  body_timeout: 0s\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.body_timeout"), "{err}");
        let err = load("", &[("TESSERA_HTTP__MAX_CONNECTIONS", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.max_connections"), "{err}");
    }

    #[test]
    fn admin_groups_default_to_nobody_and_an_empty_or_repeated_group_names_its_key() {
        assert!(load("", &[]).unwrap().admin_groups.is_empty());
        let c = load("", &[("TESSERA_ADMIN__GROUPS", "[ops, security]")]).unwrap();
        assert_eq!(c.admin_groups, ["ops", "security"]);
        let err = load("admin:\n  groups: [ops, '']\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.groups[1]"), "{err}");
        let err = load("admin:\n  groups: [ops, ops]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin.groups[1]") && err.contains("twice"),
            "{err}"
        );
    }

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
    }
}
