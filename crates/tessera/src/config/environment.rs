//! `TESSERA_<SECTION>__<KEY>` environment overrides: which variables are configuration, and how
//! each is set into the file's YAML before it is deserialised again.

use yaml_serde::Value;

use super::{RawConfig, describe};

/// One variable that sets a key: `TESSERA_A__B=v` sets `a.b` to `v`.
pub(super) struct Override {
    /// The variable's name, for error messages.
    var: String,
    /// The key's path, lower case.
    keys: Vec<String>,
    /// The value as written: YAML if it parses as YAML, else a string.
    literal: String,
}

/// The overrides among `env`. Variables without `__` (such as `TESSERA_DEV_PASSWORD`) are not
/// configuration, except the top-level `TESSERA_ISSUER` and `TESSERA_LISTEN`.
pub(super) fn overrides(env: &[(String, String)]) -> Vec<Override> {
    env.iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("TESSERA_")?;
            let keys: Vec<String> = if rest.contains("__") {
                rest.split("__").map(str::to_ascii_lowercase).collect()
            } else if matches!(rest, "ISSUER" | "LISTEN") {
                vec![rest.to_ascii_lowercase()]
            } else {
                return None;
            };
            Some(Override {
                var: name.clone(),
                keys,
                literal: value.clone(),
            })
        })
        .collect()
}

/// The file's text with `overrides` set in it, deserialised again.
pub(super) fn apply(text: &str, overrides: &[Override]) -> Result<RawConfig, String> {
    let mut value: Value = if text.trim().is_empty() {
        Value::Mapping(Default::default())
    } else {
        yaml_serde::from_str(text).map_err(|e| e.to_string())?
    };
    for o in overrides {
        set_path(&mut value, &o.keys, &o.literal).map_err(|m| format!("{}: {m}", o.var))?;
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        format!(
            "{} (after applying TESSERA_* environment overrides)",
            describe(&e)
        )
    })
}

/// Sets the key at `keys` in `root` to `literal`, creating the sections on the way.
fn set_path(root: &mut Value, keys: &[String], literal: &str) -> Result<(), String> {
    let parsed: Value = yaml_serde::from_str(literal).unwrap_or(Value::String(literal.into()));
    let mut node = root;
    for (i, key) in keys.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            return Err(format!("`{}` is not a section", keys[..i].join(".")));
        };
        let entry = map.entry(Value::String(key.clone())).or_insert(Value::Null);
        if i + 1 == keys.len() {
            *entry = parsed;
            return Ok(());
        }
        node = entry;
    }
    Err("empty key".into())
}
