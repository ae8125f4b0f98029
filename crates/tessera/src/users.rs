//! Local users: a YAML file of argon2id password hashes, read at start.
//!
//! ```yaml
//! users:
//!   - username: dev
//!     password_hash: $argon2id$v=19$...
//!     email: dev@example.com
//!     groups: [dev]
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One local user.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name; also the `sub` and `preferred_username` claims.
    pub username: String,
    /// argon2id PHC string from `tessera users hash`.
    pub password_hash: String,
    /// E-mail address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Groups (the `groups` claim).
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsersFile {
    #[serde(default)]
    pub(crate) users: Vec<User>,
}

/// Users by name.
#[derive(Clone, Debug, Default)]
pub struct Users(HashMap<String, User>);

pub mod reload;

impl Users {
    /// [`Users::load`], refusing names with a `:` when directory connectors are configured:
    /// `connector:id` is how directory people's subjects are written.
    pub fn load_beside(path: &Path, directories: bool) -> Result<Users, String> {
        let users = Users::load(path)?;
        if directories && let Some(name) = users.names().find(|name| name.contains(':')) {
            return Err(format!(
                "users file: user `{name}` has a `:` in their name, which with directory \
                 connectors configured is how directory people's subjects are written; rename \
                 the user"
            ));
        }
        Ok(users)
    }

    /// Reads a users file; one that other users may read or write is refused.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
        crate::file_mode::require_private(&[path]).map_err(|e| e.to_string())?;
        let de = yaml_serde::Deserializer::from_str(&text);
        let file: UsersFile = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: `{}`: {}", path.display(), e.path(), e.inner()))?;
        let mut users = HashMap::new();
        for user in file.users {
            if crate::secret::check_hash_format(&user.password_hash).is_err()
                || !user.password_hash.starts_with("$argon2")
            {
                return Err(format!(
                    "{}: user `{}` has a password_hash that is not argon2id; make one with `tessera users hash`",
                    path.display(),
                    user.username
                ));
            }
            let name = user.username.clone();
            if users.insert(name.clone(), user).is_some() {
                return Err(format!("{}: user `{name}` appears twice", path.display()));
            }
        }
        Ok(Users(users))
    }

    /// Finds a user by name.
    pub fn find(&self, username: &str) -> Option<&User> {
        self.0.get(username)
    }

    /// Every user name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_users_file_others_can_read_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(&path, "users: []\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let said = Users::load(&path).unwrap_err();
        assert!(
            said.contains("readable by other users (mode 0644)"),
            "{said}"
        );
        assert!(
            said.contains(&format!("chmod 600 {}", path.display())),
            "{said}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Users::load(&path).is_ok());
    }
}
