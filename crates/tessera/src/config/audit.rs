//! The `audit:` section: where audit events go.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    /// `stdout` or a file path (JSON lines, appended).
    output: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            output: "stdout".into(),
        }
    }
}

/// The audit file relative to `base`; `None` is stdout.
pub(super) fn validate(raw: &RawAudit, base: &Path) -> Option<PathBuf> {
    match raw.output.as_str() {
        "stdout" => None,
        file => Some(base.join(file)),
    }
}
