//! Configuration: one YAML file (`tessera.yaml`), every key with a default, overridable by
//! `TESSERA_<SECTION>__<KEY>` environment variables. Raw serde structs mirror the file and refuse
//! unknown keys; [`Config`] is the validated form the rest of the program receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::id::ClientId;
use tessera_core::jwt::Algorithm;
use tessera_core::redeem::{OnReplay, RedeemPolicy};
use tessera_store::{PostgresOptions, StorageUrl, Synchronous};
use yaml_serde::Value;

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
    tls: RawTls,
    tokens: RawTokens,
    refresh_token: RawRefreshToken,
    session: RawSession,
    audit: RawAudit,
    clients: Vec<RawClient>,
    users: RawUsers,
    storage: RawStorage,
    login: RawLogin,
    keys: RawKeys,
    kubernetes: Option<RawKubernetes>,
    http: RawHttp,
    /// The authenticating reverse proxy (optional).
    proxy: Option<crate::proxy::config::RawProxy>,
}

/// Both listeners: the provider's (HTTPS) and the proxy's (HTTP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    /// Load balancers and proxies (addresses or CIDRs) whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<String>,
    /// Time a client has to send a request's headers, from the connection's start (after TLS)
    /// or the end of the previous answer; an idle HTTP/1.1 keep-alive ends then too.
    header_read_timeout: String,
    /// A connection without a request in flight for this long is closed.
    idle_timeout: String,
    /// Time a client has to complete the TLS handshake.
    tls_handshake_timeout: String,
    /// Time a client has to send a request's whole body, from the first wait for it.
    body_timeout: String,
    /// Most connections open at once, both listeners together; lowered to fit the open-files
    /// limit.
    max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64);
    /// `trusted_proxies` are exempt.
    max_connections_per_ip: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            trusted_proxies: Vec::new(),
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            tls_handshake_timeout: "10s".into(),
            body_timeout: "30s".into(),
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// The cluster `tessera login` writes into kubeconfigs, published at `/kube/cluster`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    /// Name of the cluster (and default context) in kubeconfigs.
    cluster_name: String,
    /// URL of the Kubernetes API server.
    server: String,
    /// PEM CA bundle of the API server (relative to this file); unset: the system's roots.
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
    /// The client id kubectl logs in with.
    #[serde(default = "default_kube_client")]
    client_id: String,
}

fn default_kube_client() -> String {
    "kubernetes".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    /// PEM certificate chain served to clients.
    cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
    /// Lifetime of id_tokens.
    id_token_ttl: String,
    /// Lifetime of access tokens.
    access_token_ttl: String,
    /// JWS algorithm of id_tokens: RS256, ES256 or EdDSA.
    signing_alg: String,
    /// JWS algorithm of access tokens; unset: the id_token's.
    access_token_alg: Option<String>,
}

impl Default for RawTokens {
    fn default() -> Self {
        RawTokens {
            id_token_ttl: "60s".into(),
            access_token_ttl: "60s".into(),
            signing_alg: "RS256".into(),
            access_token_alg: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRefreshToken {
    /// Sliding lifetime of each refresh token.
    ttl: String,
    /// How long a used refresh token may be presented again with the same answer.
    grace_period_millis: u64,
    /// Whether the grace applies only to the IP that first used the token.
    grace_requires_same_ip: bool,
    /// `revoke_session` (default) or `reject`.
    on_replay: String,
}

impl Default for RawRefreshToken {
    fn default() -> Self {
        RawRefreshToken {
            ttl: "15m".into(),
            grace_period_millis: 0,
            grace_requires_same_ip: false,
            on_replay: "revoke_session".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSession {
    /// Absolute lifetime of a login (and of the SSO cookie).
    max_lifetime: String,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            max_lifetime: "12h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    /// `stdout` or a file path (JSON lines, appended).
    output: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            output: "stdout".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    /// Client id.
    id: String,
    /// A public client has no secret and must use PKCE.
    #[serde(default)]
    public: bool,
    /// `sha256:<hex>` of the secret, or an argon2id PHC string.
    #[serde(default)]
    secret_hash: Option<String>,
    /// Exact redirect URIs; loopback ones of public clients match any port.
    #[serde(default)]
    redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser afterwards.
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUsers {
    /// YAML file of local users with argon2id password hashes.
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStorage {
    /// `sqlite://PATH` (relative to this file) or `postgres://USER@HOST[:PORT]/DATABASE[?…]`.
    url: String,
    /// SQLite commit durability: `normal` (survives a crash) or `full` (survives power loss).
    sqlite_synchronous: String,
    /// PostgreSQL: a file holding the password (`TESSERA_STORAGE_PASSWORD` takes precedence).
    password_file: Option<PathBuf>,
    /// PostgreSQL connection pool.
    pool: RawPool,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            url: "sqlite://tessera.db".into(),
            sqlite_synchronous: "normal".into(),
            password_file: None,
            pool: RawPool::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPool {
    /// Most connections to PostgreSQL, per replica.
    max_connections: u32,
    /// Bound on opening a connection or waiting for a free one; past it requests answer 503.
    connect_timeout: String,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            max_connections: 32,
            connect_timeout: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogin {
    /// Failed logins allowed per user, and per IP, within `failure_window`.
    max_failures: u32,
    /// The window over which failures are counted.
    failure_window: String,
}

impl Default for RawLogin {
    fn default() -> Self {
        RawLogin {
            max_failures: 5,
            failure_window: "5m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    /// Age after which a new signing key is created automatically.
    rotation_interval: String,
    /// How often each replica re-reads the keys from the store.
    reload_interval: String,
}

impl Default for RawKeys {
    fn default() -> Self {
        RawKeys {
            rotation_interval: "30d".into(),
            reload_interval: "30s".into(),
        }
    }
}

/// A registered client.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its id.
    pub id: ClientId,
    /// Public (no secret, PKCE required) or confidential.
    pub public: bool,
    /// The secret's hash for confidential clients.
    pub secret_hash: Option<String>,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
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
    /// Audit output: `None` is stdout.
    pub audit_file: Option<PathBuf>,
    /// Clients by id.
    pub clients: HashMap<String, Client>,
    /// Users file.
    pub users_file: Option<PathBuf>,
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
    pub limits: crate::listener::Limits,
    /// The authenticating reverse proxy, if configured.
    pub proxy: Option<crate::proxy::config::ProxyConfig>,
}

/// The configured database.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Embedded SQLite: one file, one replica.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Commit durability.
        synchronous: Synchronous,
    },
    /// PostgreSQL, shared by any number of replicas.
    Postgres(PostgresOptions),
}

/// The cluster details `tessera login` fetches from `/kube/cluster`.
#[derive(Clone, Debug)]
pub struct KubeCluster {
    /// Name in kubeconfigs.
    pub cluster_name: String,
    /// API server URL.
    pub server: String,
    /// PEM CA bundle of the API server, read at start.
    pub certificate_authority_pem: Option<String>,
    /// The client id kubectl logs in with.
    pub client_id: String,
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
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        // First straight from the text, so errors carry line numbers.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            let de = yaml_serde::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(de).map_err(|e| invalid(describe(&e)))?
        };
        let overrides = env_overrides(env);
        let raw = if overrides.is_empty() {
            raw
        } else {
            let mut value: Value = if text.trim().is_empty() {
                Value::Mapping(Default::default())
            } else {
                yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?
            };
            for (var, keys, literal) in &overrides {
                set_path(&mut value, keys, literal).map_err(|m| invalid(format!("{var}: {m}")))?;
            }
            serde_path_to_error::deserialize(value).map_err(|e| {
                invalid(format!(
                    "{} (after applying TESSERA_* environment overrides)",
                    describe(&e)
                ))
            })?
        };
        validate(raw, path, env)
    }
}

fn describe(e: &serde_path_to_error::Error<yaml_serde::Error>) -> String {
    let key = e.path().to_string();
    if key == "." || key.is_empty() {
        e.inner().to_string()
    } else {
        format!("`{key}`: {}", e.inner())
    }
}

/// `TESSERA_A__B=v` → (`TESSERA_A__B`, [`a`, `b`], `v`). Variables without `__` (such as
/// `TESSERA_DEV_PASSWORD`) are not configuration, except the top-level `TESSERA_ISSUER` and
/// `TESSERA_LISTEN`.
fn env_overrides(env: &[(String, String)]) -> Vec<(String, Vec<String>, String)> {
    env.iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("TESSERA_")?;
            let keys: Vec<String> = if rest.contains("__") {
                rest.split("__").map(str::to_ascii_lowercase).collect()
            } else if matches!(rest, "ISSUER" | "LISTEN") {
                vec![rest.to_ascii_lowercase()]
            } else {
                return None;
            };
            Some((name.clone(), keys, value.clone()))
        })
        .collect()
}

fn set_path(root: &mut Value, keys: &[String], literal: &str) -> Result<(), String> {
    let parsed: Value = yaml_serde::from_str(literal).unwrap_or(Value::String(literal.into()));
    let mut node = root;
    for (i, key) in keys.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            return Err(format!("`{}` is not a section", keys[..i].join(".")));
        };
        let entry = map.entry(Value::String(key.clone())).or_insert(Value::Null);
        if i + 1 == keys.len() {
            *entry = parsed;
            return Ok(());
        }
        node = entry;
    }
    Err("empty key".into())
}

fn validate(raw: RawConfig, path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let bad = |key: &str, message: String| ConfigError::Value {
        path: path.to_owned(),
        key: key.into(),
        message,
    };
    let duration = |key: &str, text: &str| parse_duration(text).map_err(|m| bad(key, m));
    let alg = |key: &str, text: &str| {
        Algorithm::parse(text)
            .ok_or_else(|| bad(key, format!("`{text}` is not one of RS256, ES256, EdDSA")))
    };
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8443");
    let listen = listen_text.parse().map_err(|_| {
        bad(
            "listen",
            format!("`{listen_text}` is not an address like 127.0.0.1:8443"),
        )
    })?;
    let tls = match (raw.tls.cert_file, raw.tls.key_file) {
        (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
        (None, None) => None,
        _ => return Err(bad("tls", "set both cert_file and key_file".into())),
    };
    if let Some(issuer) = &raw.issuer {
        let url = url::Url::parse(issuer).map_err(|e| bad("issuer", format!("{e}")))?;
        if url.scheme() != "https" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "issuer",
                "must be an https URL without query or fragment (OpenID Connect Discovery §3)"
                    .into(),
            ));
        }
    }
    let signing_alg = alg("tokens.signing_alg", &raw.tokens.signing_alg)?;
    let access_token_alg = match &raw.tokens.access_token_alg {
        Some(a) => alg("tokens.access_token_alg", a)?,
        None => signing_alg,
    };
    let on_replay = match raw.refresh_token.on_replay.as_str() {
        "revoke_session" => OnReplay::RevokeSession,
        "reject" => OnReplay::Reject,
        other => {
            return Err(bad(
                "refresh_token.on_replay",
                format!("`{other}` is not one of revoke_session, reject"),
            ));
        }
    };
    let mut clients = HashMap::new();
    for (i, c) in raw.clients.into_iter().enumerate() {
        let key = format!("clients[{i}]");
        if c.id.is_empty() {
            return Err(bad(&key, "`id` is required".into()));
        }
        if !c.public && c.secret_hash.is_none() {
            return Err(bad(
                &key,
                format!(
                    "confidential client `{}` needs `secret_hash` (or set `public: true`)",
                    c.id
                ),
            ));
        }
        if c.public && c.secret_hash.is_some() {
            return Err(bad(
                &key,
                format!("public client `{}` must not have a `secret_hash`", c.id),
            ));
        }
        if let Some(hash) = &c.secret_hash {
            crate::secret::check_hash_format(hash)
                .map_err(|m| bad(&format!("{key}.secret_hash"), m))?;
        }
        for uri in c.redirect_uris.iter().chain(&c.post_logout_redirect_uris) {
            let url = url::Url::parse(uri).map_err(|e| bad(&key, format!("`{uri}`: {e}")))?;
            if url.fragment().is_some() {
                return Err(bad(
                    &key,
                    format!("`{uri}` must not have a fragment (RFC 6749 §3.1.2)"),
                ));
            }
        }
        let client = Client {
            id: ClientId::new(c.id.clone()),
            public: c.public,
            secret_hash: c.secret_hash,
            redirect_uris: c.redirect_uris,
            post_logout_redirect_uris: c.post_logout_redirect_uris,
        };
        if clients.insert(c.id.clone(), client).is_some() {
            return Err(bad(&key, format!("client id `{}` appears twice", c.id)));
        }
    }
    let storage = storage(raw.storage, base, env).map_err(|(key, m)| bad(key, m))?;
    let audit_file = match raw.audit.output.as_str() {
        "stdout" => None,
        file => Some(base.join(file)),
    };
    let kubernetes = match raw.kubernetes {
        None => None,
        Some(k) => Some(kube_cluster(k, &clients, base).map_err(|(key, m)| bad(key, m))?),
    };
    let mut trusted_proxies = Vec::new();
    for (i, text) in raw.http.trusted_proxies.iter().enumerate() {
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                bad(
                    &format!("http.trusted_proxies[{i}]"),
                    format!("`{text}` is not an address or a CIDR like 10.0.0.0/8"),
                )
            })?;
        trusted_proxies.push(net);
    }
    let limits = limits(&raw.http).map_err(|(key, m)| bad(&key, m))?;
    let proxy = raw
        .proxy
        .map(|p| crate::proxy::config::validate(p, base))
        .transpose()
        .map_err(|(key, m)| bad(&key, m))?;
    let id_token_ttl = duration("tokens.id_token_ttl", &raw.tokens.id_token_ttl)?;
    let access_token_ttl = duration("tokens.access_token_ttl", &raw.tokens.access_token_ttl)?;
    if id_token_ttl < Duration::from_secs(1) || access_token_ttl < Duration::from_secs(1) {
        return Err(bad(
            "tokens",
            "token lifetimes must be at least 1s (JWT times are whole seconds)".into(),
        ));
    }
    Ok(Config {
        path: path.to_owned(),
        issuer: raw.issuer.map(|i| i.trim_end_matches('/').to_owned()),
        listen,
        tls,
        id_token_ttl,
        access_token_ttl,
        signing_alg,
        access_token_alg,
        refresh_ttl: duration("refresh_token.ttl", &raw.refresh_token.ttl)?,
        policy: RedeemPolicy {
            grace_period: Duration::from_millis(raw.refresh_token.grace_period_millis),
            grace_requires_same_ip: raw.refresh_token.grace_requires_same_ip,
            on_replay,
        },
        session_max_lifetime: duration("session.max_lifetime", &raw.session.max_lifetime)?,
        audit_file,
        clients,
        users_file: raw.users.file.map(|f| base.join(f)),
        storage,
        login_max_failures: raw.login.max_failures,
        login_failure_window: duration("login.failure_window", &raw.login.failure_window)?,
        key_rotation_interval: duration("keys.rotation_interval", &raw.keys.rotation_interval)?,
        key_reload_interval: duration("keys.reload_interval", &raw.keys.reload_interval)?,
        kubernetes,
        trusted_proxies,
        limits,
        proxy,
    })
}

fn limits(raw: &RawHttp) -> Result<crate::listener::Limits, (String, String)> {
    let timeout = |key: &str, text: &str| {
        let key = format!("http.{key}");
        match parse_duration(text) {
            Ok(d) if d.is_zero() => Err((key, "must be longer than 0ms".to_owned())),
            Ok(d) => Ok(d),
            Err(m) => Err((key, m)),
        }
    };
    let count = |key: &str, n: usize| {
        if n == 0 {
            Err((format!("http.{key}"), "must be at least 1".to_owned()))
        } else {
            Ok(n)
        }
    };
    Ok(crate::listener::Limits {
        header_read_timeout: timeout("header_read_timeout", &raw.header_read_timeout)?,
        idle_timeout: timeout("idle_timeout", &raw.idle_timeout)?,
        tls_handshake_timeout: timeout("tls_handshake_timeout", &raw.tls_handshake_timeout)?,
        body_timeout: timeout("body_timeout", &raw.body_timeout)?,
        max_connections: count("max_connections", raw.max_connections)?,
        max_connections_per_ip: count("max_connections_per_ip", raw.max_connections_per_ip)?,
    })
}

fn storage(
    raw: RawStorage,
    base: &Path,
    env: &[(String, String)],
) -> Result<Storage, (&'static str, String)> {
    let url = StorageUrl::parse(&raw.url).map_err(|m| ("storage.url", m))?;
    match url {
        StorageUrl::Sqlite(path) => {
            let synchronous = match raw.sqlite_synchronous.as_str() {
                "normal" => Synchronous::Normal,
                "full" => Synchronous::Full,
                other => {
                    return Err((
                        "storage.sqlite_synchronous",
                        format!("`{other}` is not one of normal, full"),
                    ));
                }
            };
            Ok(Storage::Sqlite {
                path: base.join(path),
                synchronous,
            })
        }
        StorageUrl::Postgres(url) => {
            let from_env = env
                .iter()
                .find(|(name, _)| name == "TESSERA_STORAGE_PASSWORD")
                .map(|(_, value)| value.clone());
            let password = match (from_env, raw.password_file) {
                (Some(p), _) => Some(p),
                (None, Some(file)) => {
                    let file = base.join(file);
                    crate::file_mode::require_private(&[&file])
                        .map_err(|e| ("storage.password_file", e.to_string()))?;
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        (
                            "storage.password_file",
                            format!("cannot read {}: {e}", file.display()),
                        )
                    })?;
                    Some(text.trim_end_matches(['\n', '\r']).to_owned())
                }
                (None, None) => None,
            };
            if raw.pool.max_connections == 0 {
                return Err(("storage.pool.max_connections", "must be at least 1".into()));
            }
            let connect_timeout = parse_duration(&raw.pool.connect_timeout)
                .map_err(|m| ("storage.pool.connect_timeout", m))?;
            Ok(Storage::Postgres(PostgresOptions {
                password,
                max_connections: raw.pool.max_connections,
                connect_timeout,
                ..PostgresOptions::new(url)
            }))
        }
    }
}

fn kube_cluster(
    raw: RawKubernetes,
    clients: &HashMap<String, Client>,
    base: &Path,
) -> Result<KubeCluster, (&'static str, String)> {
    if raw.cluster_name.is_empty() {
        return Err(("kubernetes.cluster_name", "must not be empty".into()));
    }
    let server = url::Url::parse(&raw.server)
        .map_err(|e| ("kubernetes.server", format!("`{}`: {e}", raw.server)))?;
    if !matches!(server.scheme(), "https" | "http") {
        return Err((
            "kubernetes.server",
            format!("`{}` is not an http(s) URL", raw.server),
        ));
    }
    match clients.get(&raw.client_id) {
        Some(c) if c.public => {}
        Some(_) => {
            return Err((
                "kubernetes.client_id",
                format!(
                    "client `{}` must be public (kubectl cannot keep a secret)",
                    raw.client_id
                ),
            ));
        }
        None => {
            return Err((
                "kubernetes.client_id",
                format!(
                    "no client `{}` is configured under `clients`",
                    raw.client_id
                ),
            ));
        }
    }
    let certificate_authority_pem = match raw.certificate_authority {
        None => None,
        Some(file) => {
            let file = base.join(file);
            let pem = std::fs::read_to_string(&file).map_err(|e| {
                (
                    "kubernetes.certificate_authority",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err((
                    "kubernetes.certificate_authority",
                    format!("{} holds no PEM certificate", file.display()),
                ));
            }
            Some(pem)
        }
    };
    Ok(KubeCluster {
        cluster_name: raw.cluster_name,
        server: raw.server,
        certificate_authority_pem,
        client_id: raw.client_id,
    })
}

/// Parses `500ms`, `60s`, `15m`, `12h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 60s, 15m, 12h"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` has no unit; write it like 60s, 15m, 12h or 30d"
            ));
        }
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
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
        let c = load(
            "http:\n  idle_timeout: 5m\n",
            &[
                ("TESSERA_HTTP__HEADER_READ_TIMEOUT", "500ms"),
                ("TESSERA_HTTP__MAX_CONNECTIONS_PER_IP", "8"),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.header_read_timeout, Duration::from_millis(500));
        assert_eq!(c.limits.max_connections_per_ip, 8);
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
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
    }
}
