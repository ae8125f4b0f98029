//! Authorization codes: stored at the authorization endpoint, claimed once at the token endpoint.
//! A second presentation revokes in advance the session the first one starts (RFC 6749 §4.1.2).

use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SessionId, SsoId};
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::code_from_row;
use crate::StoreError;
use crate::model::{AuthCode, CodeRedemption};

pub(super) async fn insert(pool: &PgPool, code: &AuthCode) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, nonce, scope,
         session_id, sso_id, subject, auth_time, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&code.hash.0[..])
    .bind(code.client_id.as_str())
    .bind(&code.redirect_uri)
    .bind(code.code_challenge.as_deref())
    .bind(code.nonce.as_deref())
    .bind(&code.scope)
    .bind(code.session_id.as_str())
    .bind(code.sso_id.as_ref().map(SsoId::as_str))
    .bind(code.subject.as_str())
    .bind(code.auth_time.0)
    .bind(code.expires_at.0)
    .execute(pool)
    .await
    .map(drop)
    .map_err(query("insert_code"))
}

/// The first call claims the code; a later one learns the session it named, revoked in advance.
pub(super) async fn redeem(
    pool: &PgPool,
    hash: TokenHash,
    now: UnixMillis,
) -> Result<CodeRedemption, StoreError> {
    if let Some(code) = claim(pool, hash, now).await? {
        return Ok(CodeRedemption::Claimed(Box::new(code)));
    }
    Ok(match revoke_in_advance(pool, hash, now).await? {
        Some(session_id) => CodeRedemption::AlreadyUsed { session_id },
        None => CodeRedemption::Unknown,
    })
}

/// Marks the code used if it is not yet; the code when this call did. Of any number of
/// concurrent calls, one updates the row; the others wait on its row lock and then find
/// `used_at` set.
async fn claim(
    pool: &PgPool,
    hash: TokenHash,
    now: UnixMillis,
) -> Result<Option<AuthCode>, StoreError> {
    let op = "redeem_code";
    let claimed = sqlx::query(
        "UPDATE auth_codes SET used_at = $2 WHERE hash = $1 AND used_at IS NULL
         RETURNING client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
         subject, auth_time, expires_at",
    )
    .bind(&hash.0[..])
    .bind(now.0)
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    claimed
        .map(|row| code_from_row(hash, &row))
        .transpose()
        .map_err(query(op))
}

/// For a code used before, the session it names; `None` for an unknown code.
///
/// The first use may not have started its session yet, and then revoking it would find
/// nothing: put it in revoked already, so that its start is refused. If the session is there (or
/// being inserted: the insert waits for it), this does nothing and the caller revokes it. The row
/// lives as long as the code's (see `sweep`).
async fn revoke_in_advance(
    pool: &PgPool,
    hash: TokenHash,
    now: UnixMillis,
) -> Result<Option<SessionId>, StoreError> {
    let op = "redeem_code";
    let used = sqlx::query(
        "WITH code AS (
             SELECT session_id, subject, client_id, sso_id, scope, auth_time, expires_at
             FROM auth_codes WHERE hash = $1 AND used_at IS NOT NULL
         ), tombstone AS (
             INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
                 created_at, absolute_end, revoked_at, revoked_reason)
             SELECT session_id, subject, client_id, sso_id, scope, auth_time,
                 $2, expires_at + 3600000, $2, 'code_reuse' FROM code
             ON CONFLICT (id) DO NOTHING
         )
         SELECT session_id FROM code",
    )
    .bind(&hash.0[..])
    .bind(now.0)
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    used.map(|row| row.try_get::<String, _>(0).map(SessionId::new))
        .transpose()
        .map_err(query(op))
}
