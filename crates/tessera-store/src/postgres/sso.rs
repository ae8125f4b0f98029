//! Browser SSO sessions: recorded at login, found by their cookie's handle, touched when they
//! answer, ended on sign-out.

use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SsoId, Subject};
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

/// Ends the SSO session (only it: the sessions started from it live on); whether it was live.
pub(super) async fn end(pool: &PgPool, id: &SsoId, now: UnixMillis) -> Result<bool, StoreError> {
    sqlx::query("UPDATE sso_sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id.as_str())
        .bind(now.0)
        .execute(pool)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(query("end_sso"))
}
