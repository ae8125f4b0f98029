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
