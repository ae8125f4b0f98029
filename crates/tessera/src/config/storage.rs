//! The `storage:` section: which database holds sessions and keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_store::{PostgresOptions, PostgresTls, StorageUrl, Synchronous};

use super::{Invalid, parse_duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
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

/// The database the URL names; a PostgreSQL password comes from `TESSERA_STORAGE_PASSWORD` in
/// `env`, else from `password_file`.
pub(super) fn validate(
    raw: RawStorage,
    base: &Path,
    env: &[(String, String)],
) -> Result<Storage, Invalid> {
    let url = StorageUrl::parse(&raw.url).map_err(|m| ("storage.url".to_owned(), m))?;
    match url {
        StorageUrl::Sqlite(path) => Ok(Storage::Sqlite {
            path: base.join(path),
            synchronous: synchronous(&raw.sqlite_synchronous)?,
        }),
        StorageUrl::Postgres(url) => {
            let password = password(raw.password_file, base, env)?;
            let (max_connections, connect_timeout) = pool(&raw.pool)?;
            let options = PostgresOptions {
                password,
                max_connections,
                connect_timeout,
                ..PostgresOptions::new(url)
            };
            let tls = options.tls().map_err(|m| ("storage.url".to_owned(), m))?;
            tls_files(&tls).map_err(|m| ("storage.url".to_owned(), m))?;
            Ok(Storage::Postgres(options))
        }
    }
}

/// Checks at start what libpq checks at connect: every file the TLS parameters name can be
/// read, and `sslkey` is private to tessera's user (a root-owned key may be group-readable,
/// as libpq allows and the kubelet mounts Secrets).
fn tls_files(tls: &PostgresTls) -> Result<(), String> {
    for (parameter, file) in tls.files() {
        let shown = file.display();
        if let Err(e) = std::fs::File::open(file) {
            return Err(format!(
                "{parameter}={shown} cannot be read ({e}); put the file there or correct the \
                 path"
            ));
        }
        if parameter == "sslkey" {
            crate::file_mode::require_private(&[file])
                .map_err(|e| format!("sslkey: {e} (libpq refuses such a key too)"))?;
        }
    }
    Ok(())
}

fn synchronous(text: &str) -> Result<Synchronous, Invalid> {
    match text {
        "normal" => Ok(Synchronous::Normal),
        "full" => Ok(Synchronous::Full),
        other => Err((
            "storage.sqlite_synchronous".into(),
            format!("`{other}` is not one of normal, full"),
        )),
    }
}

/// The PostgreSQL password: the environment's first, then the file's (which must be private).
fn password(
    file: Option<PathBuf>,
    base: &Path,
    env: &[(String, String)],
) -> Result<Option<String>, Invalid> {
    let from_env = env
        .iter()
        .find(|(name, _)| name == "TESSERA_STORAGE_PASSWORD")
        .map(|(_, value)| value.clone());
    let bad = |m: String| ("storage.password_file".to_owned(), m);
    match (from_env, file) {
        (Some(p), _) => Ok(Some(p)),
        (None, Some(file)) => {
            let file = base.join(file);
            crate::file_mode::require_private(&[&file]).map_err(|e| bad(e.to_string()))?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => Ok(None),
    }
}

fn pool(raw: &RawPool) -> Result<(u32, Duration), Invalid> {
    if raw.max_connections == 0 {
        return Err((
            "storage.pool.max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    let connect_timeout = parse_duration(&raw.connect_timeout)
        .map_err(|m| ("storage.pool.connect_timeout".to_owned(), m))?;
    Ok((raw.max_connections, connect_timeout))
}
