//! The `keys:` section: signing key rotation and reload.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKeys {
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

/// The validated `keys:` section.
pub(super) struct Keys {
    pub(super) rotation_interval: Duration,
    pub(super) reload_interval: Duration,
}

pub(super) fn validate(raw: &RawKeys) -> Result<Keys, Invalid> {
    Ok(Keys {
        rotation_interval: duration("keys.rotation_interval", &raw.rotation_interval)?,
        reload_interval: duration("keys.reload_interval", &raw.reload_interval)?,
    })
}
