//! Reloading the users file without a restart: on SIGHUP, and when the file changes (checked
//! every two seconds). Removing someone takes effect within one refresh: their next login fails and
//! each of their sessions ends at its next refresh (`user_removed`). A file that does not load
//! (a typo, a bad hash, a mode others can read) is reported and the users loaded before stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};

use super::Users;
use crate::app::App;

/// How often the file's modification time and size are compared with the last load's.
const POLL: Duration = Duration::from_secs(2);

/// What identifies one version of the file on disk: editors replace the file (a new inode) or
/// rewrite it (a new mtime or size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn version(path: &Path) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Version {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Starts watching `path` for `app`; fails only when SIGHUP cannot be listened for.
pub fn spawn(app: Arc<App>, path: PathBuf) -> std::io::Result<()> {
    let mut hangup = Some(signal(SignalKind::hangup())?);
    tokio::spawn(async move {
        let mut loaded = version(&path);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                received = next_hangup(&mut hangup) => received,
            };
            let now = version(&path);
            if !asked && now == loaded {
                continue;
            }
            loaded = now;
            reload(&app, &path);
        }
    });
    Ok(())
}

/// Whether a SIGHUP came; once none can come any more, never resolves.
async fn next_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) -> bool {
    if let Some(signal) = hangup {
        if signal.recv().await.is_some() {
            return true;
        }
        *hangup = None;
    }
    std::future::pending().await
}

fn reload(app: &App, path: &Path) {
    match Users::load_beside(path, app.directories_configured()) {
        Ok(users) => {
            let count = users.names().count();
            app.replace_users(users);
            tracing::info!(file = %path.display(), users = count, "reloaded the users file");
        }
        Err(e) => tracing::warn!(
            error = %e,
            "the users file did not load; the users loaded before stay until it is fixed"
        ),
    }
}
