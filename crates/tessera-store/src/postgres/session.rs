//! Sessions (one login of one client) and the lookups of their refresh tokens; the redeem itself
//! is [`super::redeem`].

use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId};
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::{SESSION_COLUMNS, revoke_session_row, session_from_row};
use crate::StoreError;
use crate::model::{NewRefreshToken, RefreshTokenInfo, Session, SessionStart};

/// Starts `session` with its `first` refresh token, unless a reuse of its code revoked it in
/// advance.
pub(super) async fn start(
    pool: &PgPool,
    session: &Session,
    first: &NewRefreshToken,
) -> Result<SessionStart, StoreError> {
    // One statement, so atomic. Session ids are fresh random values: a row with this id is
    // the revoked tombstone a reuse of the code put in (`redeem_code`), and then nothing is
    // inserted at all.
    let inserted = sqlx::query(
        "WITH started AS (
             INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
                 created_at, absolute_end, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO NOTHING
             RETURNING id, client_id
         )
         INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
         SELECT $10, id, client_id, $11, $12 FROM started",
    )
    .bind(session.id.as_str())
    .bind(session.subject.as_str())
    .bind(session.client_id.as_str())
    .bind(session.sso_id.as_ref().map(SsoId::as_str))
    .bind(&session.scope)
    .bind(session.auth_time.0)
    .bind(session.created_at.0)
    .bind(session.absolute_end.0)
    .bind(session.revoked_at.map(|t| t.0))
    .bind(&first.hash.0[..])
    .bind(first.issued_at.0)
    .bind(first.expires_at.0)
    .execute(pool)
    .await
    .map_err(query("start_session"))?
    .rows_affected();
    Ok(if inserted == 1 {
        SessionStart::Started
    } else {
        SessionStart::CodeReused
    })
}

/// The refresh token with this hash, with its session.
pub(super) async fn find_refresh_token(
    pool: &PgPool,
    hash: TokenHash,
) -> Result<Option<RefreshTokenInfo>, StoreError> {
    let op = "find_refresh_token";
    let row = sqlx::query(&format!(
        "SELECT t.client_id, t.issued_at, t.expires_at, t.used_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = $1"
    ))
    .bind(&hash.0[..])
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.map(|r| {
        Ok(RefreshTokenInfo {
            client_id: ClientId::new(r.try_get::<String, _>(0)?),
            issued_at: UnixMillis(r.try_get(1)?),
            expires_at: UnixMillis(r.try_get(2)?),
            used_at: r.try_get::<Option<i64>, _>(3)?.map(UnixMillis),
            session: session_from_row(&r, 4)?,
        })
    })
    .transpose()
    .map_err(query(op))
}

pub(super) async fn find(pool: &PgPool, id: &SessionId) -> Result<Option<Session>, StoreError> {
    let op = "find_session";
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.map(|r| session_from_row(&r, 0))
        .transpose()
        .map_err(query(op))
}

/// Revokes a live session; whether it was live until now.
pub(super) async fn revoke(
    pool: &PgPool,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> Result<bool, StoreError> {
    revoke_session_row(pool, id, now, reason)
        .await
        .map_err(query("revoke_session"))
}

/// Sessions neither revoked nor past their absolute end.
pub(super) async fn count_active(pool: &PgPool, now: UnixMillis) -> Result<u64, StoreError> {
    sqlx::query("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND absolute_end > $1")
        .bind(now.0)
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(query("count_active_sessions"))
}
