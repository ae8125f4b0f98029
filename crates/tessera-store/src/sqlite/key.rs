//! The key material the store keeps: named secrets and signing keys.

use rusqlite::{Connection, params};
use tessera_core::clock::UnixMillis;

use super::connection::query;
use crate::StoreError;
use crate::model::StoredKey;

/// The secret `name`, stored as `candidate` first if there is none yet.
pub(super) fn secret_or_insert(
    c: &Connection,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    c.execute(
        "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
        params![name, candidate],
    )
    .map_err(query("secret_or_insert"))?;
    c.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .map_err(query("secret_or_insert"))
}

/// Every signing key, oldest first.
pub(super) fn signing_keys(c: &Connection) -> Result<Vec<StoredKey>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY created_at, kid",
        )
        .map_err(query("signing_keys"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredKey {
                kid: r.get(0)?,
                alg: r.get(1)?,
                pkcs8: r.get(2)?,
                created_at: UnixMillis(r.get(3)?),
            })
        })
        .map_err(query("signing_keys"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(query("signing_keys"))
}

/// Adds `key` unless a key of its algorithm newer than `fresh_after` exists. One statement:
/// SQLite runs writers one at a time, so the check and the insert cannot interleave with
/// another process's.
pub(super) fn add_signing_key_unless_fresh(
    c: &Connection,
    key: &StoredKey,
    fresh_after: UnixMillis,
) -> Result<bool, StoreError> {
    let op = "add_signing_key_unless_fresh";
    c.prepare_cached(
        "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) SELECT ?1, ?2, ?3, ?4 \
         WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE alg = ?2 AND created_at > ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            key.kid,
            key.alg,
            key.pkcs8,
            key.created_at.0,
            fresh_after.0
        ])
    })
    .map(|inserted| inserted == 1)
    .map_err(query(op))
}
