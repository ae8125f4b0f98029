//! The key material every replica shares: named secrets and signing keys.

use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;

use super::connection::query;
use crate::StoreError;
use crate::model::StoredKey;

/// The secret `name`, stored as `candidate` first if there is none yet.
pub(super) async fn secret_or_insert(
    pool: &PgPool,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let op = "secret_or_insert";
    // Two statements, so that the SELECT's snapshot sees a value another replica committed
    // while this INSERT waited on it.
    sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(candidate)
        .execute(pool)
        .await
        .map_err(query(op))?;
    sqlx::query("SELECT value FROM secrets WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(query(op))
}

/// Every signing key, oldest first.
pub(super) async fn signing_keys(pool: &PgPool) -> Result<Vec<StoredKey>, StoreError> {
    let op = "signing_keys";
    // Byte order for kid, as SQLite compares text.
    let rows = sqlx::query(
        "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY created_at, kid COLLATE \"C\"",
    )
    .fetch_all(pool)
    .await
    .map_err(query(op))?;
    rows.iter()
        .map(|r| {
            Ok(StoredKey {
                kid: r.try_get(0)?,
                alg: r.try_get(1)?,
                pkcs8: r.try_get(2)?,
                created_at: UnixMillis(r.try_get(3)?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(query(op))
}

pub(super) async fn add_signing_key(pool: &PgPool, key: &StoredKey) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(key.pkcs8.as_slice())
        .bind(key.created_at.0)
        .execute(pool)
        .await
        .map(drop)
        .map_err(query("add_signing_key"))
}

/// Key of the advisory lock held while deciding whether a signing key is due, so replicas
/// decide one at a time: "tessera" in ASCII, then 3.
const SIGNING_KEY_LOCK: i64 = 0x7465_7373_6572_6103;

/// Adds `key` unless a key of its algorithm newer than `fresh_after` exists. The check and the
/// insert are one statement, and the advisory lock taken first makes concurrent callers run it
/// one after the other: at READ COMMITTED, each statement sees what the one before committed.
pub(super) async fn add_signing_key_unless_fresh(
    pool: &PgPool,
    key: &StoredKey,
    fresh_after: UnixMillis,
) -> Result<bool, StoreError> {
    let op = "add_signing_key_unless_fresh";
    let mut tx = pool.begin().await.map_err(query(op))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SIGNING_KEY_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(query(op))?;
    let added = sqlx::query(
        "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) SELECT $1, $2, $3, $4 \
         WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE alg = $2 AND created_at > $5)",
    )
    .bind(&key.kid)
    .bind(&key.alg)
    .bind(key.pkcs8.as_slice())
    .bind(key.created_at.0)
    .bind(fresh_after.0)
    .execute(&mut *tx)
    .await
    .map_err(query(op))?
    .rows_affected()
        == 1;
    tx.commit().await.map_err(query(op))?;
    Ok(added)
}
