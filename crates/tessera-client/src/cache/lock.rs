//! The cross-process lock of a cache file: an exclusive `flock` on a separate `.lock` file,
//! held across read-refresh-write so that of any number of tools only one refreshes. The lock
//! dies with its holder, so a lock file is never deleted by hand (a refresh cut short that way
//! would later be replayed); the holder writes its process id into it for whoever waits.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::{CacheError, TokenCache};

/// The process holding a cache lock, read from the lock file it wrote its id into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A process id, and the program's name where the system tells it.
    Process {
        /// Its id.
        pid: u32,
        /// Its program name, e.g. `tessera`.
        name: Option<String>,
    },
    /// The lock file names no living process: its holder is a tessera from before lock files
    /// named their holder, has not written its id yet, or died without clearing it.
    Unknown,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Process {
                pid,
                name: Some(name),
            } => write!(f, "held by process {pid} ({name})"),
            Holder::Process { pid, name: None } => write!(f, "held by process {pid}"),
            Holder::Unknown => write!(f, "held by another process"),
        }
    }
}

/// An exclusive hold on a cache file; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct CacheLock {
    file: File,
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // Still held here: the id goes before the lock does, so no waiter reads it afterwards.
        let _ = self.file.set_len(0);
    }
}

impl TokenCache {
    /// Takes the exclusive lock, waiting at most `timeout`, and writes this process's id into
    /// the lock file for whoever waits next. The wait is a blocking `flock` on a helper thread,
    /// so the lock passes to the next process the moment it is released.
    pub fn lock(&self, timeout: Duration) -> Result<CacheLock, CacheError> {
        let io = |reason| CacheError::Io {
            action: "lock",
            path: self.lock_path.clone(),
            reason,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => return Ok(held(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // The duplicate shares the open file description, so its lock is `file`'s lock.
        let waiter = file.try_clone().map_err(io)?;
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(waiter.lock());
        });
        match wait.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(held(file)),
            Ok(Err(e)) => Err(io(e)),
            // The thread may still get the lock later; the caller gives up and exits.
            Err(_) => Err(CacheError::LockTimeout {
                path: self.lock_path.clone(),
                waited: timeout,
                holder: holder(&self.lock_path),
            }),
        }
    }
}

/// The lock taken on `file`, with this process's id written into it.
fn held(file: File) -> CacheLock {
    // The id only makes a waiter's message more helpful: failing to write it changes nothing.
    let _ = file
        .set_len(0)
        .and_then(|()| file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0));
    CacheLock { file }
}

/// Who the lock file at `path` says holds it, with the program's name where `/proc` has it. An
/// id left by a holder that died (it had no time to clear it) names no one: where `/proc`
/// exists, a process missing from it is gone.
fn holder(path: &Path) -> Holder {
    let pid = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    let Some(pid) = pid else {
        return Holder::Unknown;
    };
    let proc = Path::new("/proc");
    if proc.join("self").exists() && !proc.join(pid.to_string()).exists() {
        return Holder::Unknown;
    }
    let name = std::fs::read_to_string(proc.join(pid.to_string()).join("comm"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    Holder::Process { pid, name }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;
    use crate::cache::CacheKey;

    fn key(issuer: &str) -> CacheKey {
        CacheKey {
            issuer: issuer.into(),
            client_id: "kubernetes".into(),
            user: "alice".into(),
        }
    }

    #[test]
    fn a_held_lock_times_out_naming_its_holder_and_never_advising_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(&dir.path().join("cache"), key("https://a")).unwrap();
        let held = cache.lock(Duration::from_secs(1)).unwrap();
        let err = cache.lock(Duration::from_millis(50)).unwrap_err();
        let said = err.to_string();
        assert!(said.contains(".lock"), "{said}");
        let pid = std::process::id();
        assert!(said.contains(&format!("held by process {pid}")), "{said}");
        assert!(said.ends_with("; wait for it or end it"), "{said}");
        assert!(
            !said.contains("delete") && !said.contains("remove"),
            "{said}"
        );
        drop(held);
        let lock_file = cache.path().with_extension("lock");
        assert_eq!(
            std::fs::read_to_string(&lock_file).unwrap(),
            "",
            "cleared on release"
        );
        cache.lock(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_lock_file_naming_no_process_still_gets_a_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        std::fs::write(&path, "").unwrap();
        assert_eq!(holder(&path), Holder::Unknown);
        std::fs::write(&path, "not a pid\n").unwrap();
        assert_eq!(holder(&path).to_string(), "held by another process");
        // No process has this id (Linux caps them far lower): it names no one.
        std::fs::write(&path, "4294967295\n").unwrap();
        assert_eq!(holder(&path).to_string(), "held by another process");
    }
}
