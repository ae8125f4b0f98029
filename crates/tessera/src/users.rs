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

impl Users {
    /// Reads a users file.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
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
}
