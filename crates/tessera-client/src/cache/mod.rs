//! The token cache of `tessera credential` (DESIGN.md "Client side"): one JSON file per
//! (issuer, client, user) in the user's cache directory, mode 0600, replaced atomically
//! (temporary file + rename) so a reader never sees half a file, and guarded by an exclusive
//! lock on a separate `.lock` file that is held across read-refresh-write.
//!
//! The directory is the user's own and closed to everyone else (0700): whoever can write in it
//! could plant tokens of their own identity, whoever can read it could take the user's. The
//! lock is an `flock`, which dies with its holder, so a lock file is never deleted by hand (a
//! refresh cut short that way would later be replayed); it names its holder's process instead.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_core::clock::UnixMillis;
use tessera_core::shell::shell_word;
use tessera_oidc::{IdClaims, ProviderMetadata, Tokens};

mod lock;

pub use lock::{CacheLock, Holder};

/// Format version of cache files; a file of another version is treated as absent.
pub const CACHE_VERSION: u32 = 1;

/// How long a process waits for another one's refresh before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Whose tokens a cache file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// The issuer URL, exactly as configured.
    pub issuer: String,
    /// The OAuth client id.
    pub client_id: String,
    /// The tessera user the kubeconfig entry belongs to (`--user`), empty when unnamed.
    pub user: String,
}

/// One cached login.
#[derive(Clone, Serialize, Deserialize)]
pub struct Entry {
    /// [`CACHE_VERSION`].
    pub version: u32,
    /// The issuer these tokens come from; checked on every read.
    pub issuer: String,
    /// The client they were issued to.
    pub client_id: String,
    /// The user named in the kubeconfig.
    pub user: String,
    /// Where refreshes go (from discovery, kept so a refresh costs one round trip).
    pub token_endpoint: String,
    /// Where `tessera logout` revokes the refresh token.
    pub revocation_endpoint: Option<String>,
    /// The id_token kubectl sends.
    pub id_token: String,
    /// Its `iat`, in seconds.
    pub issued_at: i64,
    /// Its `exp`, in seconds.
    pub expires_at: i64,
    /// The current refresh token, if the provider issued one.
    pub refresh_token: Option<String>,
}

/// The tokens are left out: a `{:?}` in a log or an error must not hand out a session.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("version", &self.version)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("user", &self.user)
            .field("token_endpoint", &self.token_endpoint)
            .field("revocation_endpoint", &self.revocation_endpoint)
            .field("id_token", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Entry {
    /// The safety margin m: 10 s, or a sixth of the token's lifetime when that is shorter.
    fn margin_millis(&self) -> i64 {
        let lifetime = (self.expires_at - self.issued_at).max(0) * 1000;
        (lifetime / 6).min(10_000)
    }

    /// When kubectl should stop using the token: `exp − m` (client-go allows no slack).
    pub fn usable_until(&self) -> UnixMillis {
        UnixMillis(self.expires_at.saturating_mul(1000) - self.margin_millis())
    }

    /// Whether the cached id_token can be answered as is at `now`.
    pub fn is_fresh(&self, now: UnixMillis) -> bool {
        now < self.usable_until()
    }
}

/// A cache entry for a fresh login.
pub fn entry_from(
    key: &CacheKey,
    provider: &ProviderMetadata,
    tokens: Tokens,
    claims: &IdClaims,
) -> Entry {
    Entry {
        version: CACHE_VERSION,
        issuer: key.issuer.clone(),
        client_id: key.client_id.clone(),
        user: key.user.clone(),
        token_endpoint: provider.token_endpoint.clone(),
        revocation_endpoint: provider.revocation_endpoint.clone(),
        id_token: tokens.id_token,
        issued_at: claims.iat,
        expires_at: claims.exp,
        refresh_token: tokens.refresh_token,
    }
}

/// Why a cache file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading, writing or locking failed.
    #[error("cannot {action} the token cache {}: {reason}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause. Not a `source`: the message already says it, and `{:#}` would repeat it.
        reason: std::io::Error,
    },
    /// The file is not a cache file of this version, or belongs to another issuer or client.
    #[error("the token cache {} {reason}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another process held the lock too long.
    #[error(
        "gave up after {}s waiting for the token cache lock {}, {holder}; wait for it or end it",
        waited.as_secs(), path.display()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// Who holds it, as the lock file says.
        holder: Holder,
    },
    /// Other users may open the cache directory.
    #[error(
        "the token cache directory {} is open to other users (mode {mode:04o}); run `chmod 700 {}`",
        dir.display(), shell_word(dir)
    )]
    DirectoryExposed {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The cache directory belongs to another user, who could read or replace its files.
    #[error(
        "the token cache directory {} belongs to user id {owner}, not to you ({me}); set TESSERA_CACHE_DIR to a directory of your own",
        dir.display()
    )]
    DirectoryNotOwned {
        /// The directory.
        dir: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// This process's effective user id.
        me: u32,
    },
}

/// The cache file of one key.
#[derive(Debug)]
pub struct TokenCache {
    key: CacheKey,
    path: PathBuf,
    lock_path: PathBuf,
}

/// The user's cache directory for tessera: `$TESSERA_CACHE_DIR`, else `$XDG_CACHE_HOME/tessera`,
/// else `~/.cache/tessera`.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("TESSERA_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("tessera"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache").join("tessera"))
}

/// Creates the cache directory `dir` (0700) when missing, and refuses one that other users may
/// open or that belongs to another user. A symlink is judged by the directory it points at.
pub fn require_private_dir(dir: &Path) -> Result<(), CacheError> {
    let io = |action, reason| CacheError::Io {
        action,
        path: dir.to_owned(),
        reason,
    };
    create_private_dir(dir).map_err(|e| io("create the directory", e))?;
    let metadata = std::fs::metadata(dir).map_err(|e| io("examine the directory", e))?;
    check_dir(
        dir,
        metadata.permissions().mode(),
        metadata.uid(),
        rustix::process::geteuid().as_raw(),
    )
}

/// The rule of [`require_private_dir`], given the directory's mode and owner and our user id.
fn check_dir(dir: &Path, mode: u32, owner: u32, me: u32) -> Result<(), CacheError> {
    if owner != me {
        return Err(CacheError::DirectoryNotOwned {
            dir: dir.to_owned(),
            owner,
            me,
        });
    }
    if mode & 0o077 != 0 {
        return Err(CacheError::DirectoryExposed {
            dir: dir.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// The keys of every readable cache entry in `dir` (none when `dir` does not exist), once `dir`
/// passes [`require_private_dir`]: how `tessera logout --issuer` finds the logins it ends.
pub fn cached_keys(dir: &Path) -> Result<Vec<CacheKey>, CacheError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(reason) => {
            return Err(CacheError::Io {
                action: "list",
                path: dir.to_owned(),
                reason,
            });
        }
    };
    require_private_dir(dir)?;
    let mut keys = Vec::new();
    for file in entries.flatten() {
        let path = file.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        // Another version or a broken file is nobody's login to end here.
        let Some(entry) = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok())
            .filter(|e| e.version == CACHE_VERSION)
        else {
            continue;
        };
        keys.push(CacheKey {
            issuer: entry.issuer,
            client_id: entry.client_id,
            user: entry.user,
        });
    }
    keys.sort_by(|a, b| (&a.client_id, &a.user).cmp(&(&b.client_id, &b.user)));
    Ok(keys)
}

impl TokenCache {
    /// The cache file of `key` in `dir`, once `dir` passes [`require_private_dir`]. The name is a
    /// hash of the key, so two issuers or clients never share a file and the name leaks nothing.
    pub fn open(dir: &Path, key: CacheKey) -> Result<TokenCache, CacheError> {
        require_private_dir(dir)?;
        let digest =
            Sha256::digest(format!("{}\n{}\n{}", key.issuer, key.client_id, key.user).as_bytes());
        let name = hex::encode(&digest[..16]);
        Ok(TokenCache {
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
            key,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the entry: `None` when there is none. A file that is not a cache entry for exactly
    /// this issuer, client and user is [`CacheError::Unusable`]: its tokens are never sent.
    pub fn read(&self) -> Result<Option<Entry>, CacheError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(reason) => {
                return Err(CacheError::Io {
                    action: "read",
                    path: self.path.clone(),
                    reason,
                });
            }
        };
        let unusable = |reason: String| CacheError::Unusable {
            path: self.path.clone(),
            reason,
        };
        let entry: Entry =
            serde_json::from_slice(&bytes).map_err(|e| unusable(format!("is corrupt ({e})")))?;
        if entry.version != CACHE_VERSION {
            return Err(unusable(format!(
                "has format version {}, not {CACHE_VERSION}",
                entry.version
            )));
        }
        if entry.issuer != self.key.issuer
            || entry.client_id != self.key.client_id
            || entry.user != self.key.user
        {
            return Err(unusable(format!(
                "belongs to issuer {} and client {}, not {} and {}",
                entry.issuer, entry.client_id, self.key.issuer, self.key.client_id
            )));
        }
        Ok(Some(entry))
    }

    /// Whose tokens this file holds.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Replaces the entry atomically: a temporary file (mode 0600) in the same directory,
    /// flushed, then renamed over the old one.
    pub fn write(&self, entry: &Entry) -> Result<(), CacheError> {
        let io = |action, reason| CacheError::Io {
            action,
            path: self.path.clone(),
            reason,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let json = serde_json::to_vec_pretty(entry).map_err(|e| io("encode", e.into()))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tessera-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| io("write", e))?;
        temp.write_all(&json).map_err(|e| io("write", e))?;
        temp.as_file().sync_all().map_err(|e| io("write", e))?;
        temp.persist(&self.path)
            .map_err(|e| io("replace", e.error))?;
        Ok(())
    }

    /// Deletes the entry; a missing file is fine.
    pub fn remove(&self) -> Result<(), CacheError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(CacheError::Io {
                action: "delete",
                path: self.path.clone(),
                reason: e,
            }),
            _ => Ok(()),
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn key(issuer: &str) -> CacheKey {
        CacheKey {
            issuer: issuer.into(),
            client_id: "kubernetes".into(),
            user: "alice".into(),
        }
    }

    fn entry(key: &CacheKey, issued_at: i64, expires_at: i64) -> Entry {
        Entry {
            version: CACHE_VERSION,
            issuer: key.issuer.clone(),
            client_id: key.client_id.clone(),
            user: key.user.clone(),
            token_endpoint: format!("{}/token", key.issuer),
            revocation_endpoint: None,
            id_token: "header.payload.signature".into(),
            issued_at,
            expires_at,
            refresh_token: Some("tsr1_x".into()),
        }
    }

    #[test]
    fn debug_shows_no_token() {
        let shown = format!("{:?}", entry(&key("https://a"), 1000, 4600));
        assert!(
            !shown.contains("header.payload") && !shown.contains("tsr1_x"),
            "{shown}"
        );
        assert!(shown.contains("alice"), "{shown}");
    }

    #[test]
    fn margin_is_ten_seconds_or_a_sixth_of_a_short_lifetime() {
        let k = key("https://a");
        let hour = entry(&k, 1000, 4600);
        assert_eq!(hour.usable_until(), UnixMillis(4_590_000));
        let two_seconds = entry(&k, 1000, 1002);
        assert_eq!(two_seconds.usable_until(), UnixMillis(1_001_667));
        assert!(two_seconds.is_fresh(UnixMillis(1_001_666)));
        assert!(!two_seconds.is_fresh(UnixMillis(1_001_667)));
    }

    #[test]
    fn written_entries_read_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(&dir.path().join("sub"), key("https://a")).unwrap();
        assert!(cache.read().unwrap().is_none());
        let e = entry(cache.key(), 1, 61);
        cache.write(&e).unwrap();
        assert_eq!(cache.read().unwrap().unwrap().id_token, e.id_token);
        let mode = std::fs::metadata(cache.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        cache.remove().unwrap();
        cache.remove().unwrap();
        assert!(cache.read().unwrap().is_none());
    }

    #[test]
    fn a_file_of_another_issuer_or_garbage_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let ours = TokenCache::open(&dir.path().join("cache"), key("https://a")).unwrap();
        let theirs = TokenCache::open(&dir.path().join("cache"), key("https://b")).unwrap();
        theirs.write(&entry(theirs.key(), 1, 61)).unwrap();
        std::fs::copy(theirs.path(), ours.path()).unwrap();
        assert!(matches!(ours.read(), Err(CacheError::Unusable { .. })));
        std::fs::write(ours.path(), b"{not json").unwrap();
        let err = ours.read().unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn a_cache_directory_is_created_owner_only_and_refused_when_open_or_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("new").join("tessera");
        require_private_dir(&cache_dir).unwrap();
        let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        for open in [0o755, 0o750, 0o701, 0o720] {
            std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(open)).unwrap();
            let said = require_private_dir(&cache_dir).unwrap_err().to_string();
            assert!(said.contains(&format!("(mode {open:04o})")), "{said}");
            assert!(
                said.contains(&format!("run `chmod 700 {}`", cache_dir.display())),
                "{said}"
            );
            assert!(TokenCache::open(&cache_dir, key("https://a")).is_err());
        }
        std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        require_private_dir(&cache_dir).unwrap();

        let foreign = check_dir(&cache_dir, 0o700, 1001, 1000).unwrap_err();
        assert!(matches!(
            foreign,
            CacheError::DirectoryNotOwned {
                owner: 1001,
                me: 1000,
                ..
            }
        ));
        assert!(
            foreign.to_string().contains("TESSERA_CACHE_DIR"),
            "{foreign}"
        );
    }
}
