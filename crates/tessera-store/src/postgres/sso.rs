//! Browser SSO sessions: recorded at login, found by their cookie's handle, revoked with every
//! session started from them.

use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use super::connection::query;
use crate::StoreError;
use crate::model::SsoSession;

pub(super) async fn create(pool: &PgPool, sso: &SsoSession) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sso_sessions
         (handle_hash, id, subject, auth_time, expires_at, revoked_at, last_used_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&sso.handle.0[..])
    .bind(sso.id.as_str())
    .bind(sso.subject.as_str())
    .bind(sso.auth_time.0)
    .bind(sso.expires_at.0)
    .bind(sso.revoked_at.map(|t| t.0))
    .bind(sso.last_used_at.0)
    .execute(pool)
    .await
    .map(drop)
    .map_err(query("create_sso"))
}

pub(super) async fn find(
    pool: &PgPool,
    handle: TokenHash,
) -> Result<Option<SsoSession>, StoreError> {
    let op = "find_sso";
    let row = sqlx::query(
        "SELECT id, subject, auth_time, expires_at, revoked_at, last_used_at FROM sso_sessions
         WHERE handle_hash = $1",
    )
    .bind(&handle.0[..])
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.map(|r| {
        Ok(SsoSession {
            handle,
            id: SsoId::new(r.try_get::<String, _>(0)?),
            subject: Subject::new(r.try_get::<String, _>(1)?),
            auth_time: UnixMillis(r.try_get(2)?),
            expires_at: UnixMillis(r.try_get(3)?),
            revoked_at: r.try_get::<Option<i64>, _>(4)?.map(UnixMillis),
            last_used_at: UnixMillis(r.try_get(5)?),
        })
    })
    .transpose()
    .map_err(query(op))
}

pub(super) async fn touch(
    pool: &PgPool,
    handle: TokenHash,
    now: UnixMillis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sso_sessions SET last_used_at = $2 WHERE handle_hash = $1 AND last_used_at < $2",
    )
    .bind(&handle.0[..])
    .bind(now.0)
    .execute(pool)
    .await
    .map(drop)
    .map_err(query("touch_sso"))
}

/// Revokes the SSO session and, in the same transaction, every live session started from it;
/// answers those sessions.
pub(super) async fn revoke(
    pool: &PgPool,
    id: &SsoId,
    now: UnixMillis,
    reason: &str,
) -> Result<Vec<SessionId>, StoreError> {
    let op = "revoke_sso";
    let mut tx = pool.begin().await.map_err(query(op))?;
    sqlx::query("UPDATE sso_sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id.as_str())
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(query(op))?;
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3
         WHERE sso_id = $1 AND revoked_at IS NULL RETURNING id",
    )
    .bind(id.as_str())
    .bind(now.0)
    .bind(reason)
    .fetch_all(&mut *tx)
    .await
    .map_err(query(op))?;
    let ids = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0).map(SessionId::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(query(op))?;
    tx.commit().await.map_err(query(op))?;
    Ok(ids)
}
