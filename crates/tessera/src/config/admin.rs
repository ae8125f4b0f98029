//! The `admin:` section: who may use the admin API (`/admin/v1/`).

use serde::Deserialize;

use super::Invalid;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    /// Groups (after the `groups:` mapping) whose members may list and end anyone's sessions
    /// and disable people through `/admin/v1/`; empty (the default): the API refuses everyone.
    groups: Vec<String>,
}

/// The admin groups, each named once.
pub(super) fn validate(raw: RawAdmin) -> Result<Vec<String>, Invalid> {
    for (i, group) in raw.groups.iter().enumerate() {
        let key = || format!("admin.groups[{i}]");
        if group.trim().is_empty() {
            return Err((key(), "a group name cannot be empty".into()));
        }
        if raw.groups[..i].contains(group) {
            return Err((key(), format!("`{group}` is listed twice")));
        }
    }
    Ok(raw.groups)
}
