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
