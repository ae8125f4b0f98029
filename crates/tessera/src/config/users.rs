//! The `users:` section: the file of local users.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUsers {
    /// YAML file of local users with argon2id password hashes.
    file: Option<PathBuf>,
}

/// The users file relative to `base`, if set.
pub(super) fn validate(raw: RawUsers, base: &Path) -> Option<PathBuf> {
    raw.file.map(|f| base.join(f))
}
