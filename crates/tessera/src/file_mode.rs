//! Secrets at rest: the configuration, the users file and the database hold client secrets,
//! password hashes and the signing, rotation and cookie keys, so tessera refuses to use them
//! while other users may read or write them, and names the `chmod` that fixes it. A symlink is
//! judged by the file it points at: Kubernetes mounts ConfigMaps and Secrets as
//! `tessera.yaml -> ..data/tessera.yaml`, and the links themselves are always 0777.
//!
//! One exception, the one PostgreSQL makes for its key files: a file owned by root may be
//! readable by its group when tessera runs as another user. That is how the kubelet mounts
//! Secrets and ConfigMaps for a pod with `fsGroup` (root:fsGroup, mode 0440): only root and the
//! pod's own group can read them, and root can read everything anyway.

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permission bits that let other users read or write a file; execute alone reveals nothing.
const OPEN_TO_OTHERS: u32 = 0o066;

/// The group's read bit, allowed on a root-owned file when tessera itself is not root.
const GROUP_READ: u32 = 0o040;

/// Files other users may read or write, each with its mode.
#[derive(Debug, PartialEq, Eq)]
pub struct Exposed {
    files: Vec<(PathBuf, u32)>,
}

impl std::error::Error for Exposed {}

impl fmt::Display for Exposed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, mode)) = self.files.first() else {
            return Ok(());
        };
        let how = if mode & 0o044 != 0 {
            "readable"
        } else {
            "writable"
        };
        let names: Vec<String> = self.files.iter().map(|(p, _)| shell_word(p)).collect();
        write!(
            f,
            "{} is {how} by other users (mode {mode:04o}); run `chmod 600 {}`",
            first.display(),
            names.join(" ")
        )
    }
}

/// Refuses when any of `files` is a regular file that other users may read or write. Files
/// that do not exist (or cannot be examined) pass: whoever reads them reports that.
pub fn require_private(files: &[&Path]) -> Result<(), Exposed> {
    let exposed: Vec<(PathBuf, u32)> = files
        .iter()
        .filter_map(|path| {
            // `metadata` follows symlinks: the target is what is read.
            let metadata = std::fs::metadata(path).ok()?;
            let mode = metadata.permissions().mode() & 0o777;
            let tolerated = tolerated_bits(metadata.uid(), rustix::process::geteuid().as_raw());
            (metadata.is_file() && mode & OPEN_TO_OTHERS & !tolerated != 0)
                .then(|| (path.to_path_buf(), mode))
        })
        .collect();
    if exposed.is_empty() {
        Ok(())
    } else {
        Err(Exposed { files: exposed })
    }
}

/// The bits of [`OPEN_TO_OTHERS`] a file owned by `owner` may have when tessera runs as `me`:
/// group read on a root-owned file when tessera is not root (the kubelet's `fsGroup` mounts).
fn tolerated_bits(owner: u32, me: u32) -> u32 {
    const ROOT: u32 = 0;
    if owner == ROOT && me != ROOT {
        GROUP_READ
    } else {
        0
    }
}

/// `path` as one word a POSIX shell reads back unchanged (shared with the kubectl client).
pub use tessera_core::shell::shell_word;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "secret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn owner_only_files_and_missing_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let private = file(dir.path(), "a", 0o600);
        let read_only = file(dir.path(), "b", 0o400);
        let executable = file(dir.path(), "c", 0o711);
        let missing = dir.path().join("missing");
        assert_eq!(
            require_private(&[&private, &read_only, &executable, &missing]),
            Ok(())
        );
    }

    #[test]
    fn files_others_can_read_or_write_are_named_in_one_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let world = file(dir.path(), "db", 0o644);
        let private = file(dir.path(), "db-shm", 0o600);
        let group = file(dir.path(), "db-wal", 0o620);
        let said = require_private(&[&world, &private, &group])
            .unwrap_err()
            .to_string();
        let d = dir.path().display();
        assert_eq!(
            said,
            format!(
                "{d}/db is readable by other users (mode 0644); run `chmod 600 {d}/db {d}/db-wal`"
            )
        );
        let said = require_private(&[&group]).unwrap_err().to_string();
        assert!(said.starts_with(&format!(
            "{d}/db-wal is writable by other users (mode 0620)"
        )));
    }

    #[test]
    fn a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = file(dir.path(), "target", 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(require_private(&[&link]), Ok(()));
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let said = require_private(&[&link]).unwrap_err().to_string();
        assert!(
            said.contains(&format!("chmod 600 {}", link.display())),
            "{said}"
        );
    }

    #[test]
    fn only_a_root_owned_file_read_by_a_non_root_tessera_may_be_group_readable() {
        // (file owner, tessera's user) -> tolerated bits
        assert_eq!(
            tolerated_bits(0, 65532),
            GROUP_READ,
            "the kubelet's fsGroup mount"
        );
        assert_eq!(tolerated_bits(0, 0), 0, "tessera as root: its own file");
        assert_eq!(tolerated_bits(1000, 1000), 0, "its own file");
        assert_eq!(tolerated_bits(1000, 65532), 0, "another user's file");
        // Group read is all it tolerates: 0440 passes, 0460 and 0444 do not.
        assert_eq!(0o440 & OPEN_TO_OTHERS & !GROUP_READ, 0);
        assert_ne!(0o460 & OPEN_TO_OTHERS & !GROUP_READ, 0);
        assert_ne!(0o444 & OPEN_TO_OTHERS & !GROUP_READ, 0);
    }

    #[test]
    fn paths_a_shell_would_split_are_quoted() {
        assert_eq!(
            shell_word(Path::new("/etc/tessera.yaml")),
            "/etc/tessera.yaml"
        );
        assert_eq!(shell_word(Path::new("/my dir/it's")), r"'/my dir/it'\''s'");
        assert_eq!(shell_word(Path::new("$HOME")), "'$HOME'");
    }
}
