//! The row readers and the session revocation shared by the store's methods, the redeem
//! transaction and the snapshot copy.

use sqlx::Row;
use sqlx::postgres::PgRow;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use crate::model::*;

pub(super) const SESSION_COLUMNS: &str = "s.id, s.subject, s.client_id, s.sso_id, s.scope, s.auth_time, s.created_at, s.absolute_end, s.revoked_at";

/// The columns [`proxy_session_from_row`] reads, in its order.
pub(super) const PROXY_SESSION_COLUMNS: &str = "handle_hash, created_at, last_seen_at, absolute_end, refreshed_at, refresh_lease_until, sealed, session_id";

pub(super) async fn revoke_session_row<'e, E>(
    executor: E,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id.as_str())
    .bind(now.0)
    .bind(reason)
    .execute(executor)
    .await
    .map(|done| done.rows_affected() == 1)
}

pub(super) fn session_from_row(r: &PgRow, at: usize) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: SessionId::new(r.try_get::<String, _>(at)?),
        subject: Subject::new(r.try_get::<String, _>(at + 1)?),
        client_id: ClientId::new(r.try_get::<String, _>(at + 2)?),
        sso_id: r.try_get::<Option<String>, _>(at + 3)?.map(SsoId::new),
        scope: r.try_get(at + 4)?,
        auth_time: UnixMillis(r.try_get(at + 5)?),
        created_at: UnixMillis(r.try_get(at + 6)?),
        absolute_end: UnixMillis(r.try_get(at + 7)?),
        revoked_at: r.try_get::<Option<i64>, _>(at + 8)?.map(UnixMillis),
    })
}

/// A row of [`PROXY_SESSION_COLUMNS`].
pub(super) fn proxy_session_from_row(r: &PgRow) -> Result<ProxySession, sqlx::Error> {
    Ok(ProxySession {
        handle: hash_at(r, 0)?,
        created_at: UnixMillis(r.try_get(1)?),
        last_seen_at: UnixMillis(r.try_get(2)?),
        absolute_end: UnixMillis(r.try_get(3)?),
        refreshed_at: UnixMillis(r.try_get(4)?),
        refresh_lease_until: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
        sealed: r.try_get(6)?,
        session_id: r.try_get::<Option<String>, _>(7)?.map(SessionId::new),
    })
}

pub(super) fn code_from_row(hash: TokenHash, r: &PgRow) -> Result<AuthCode, sqlx::Error> {
    Ok(AuthCode {
        hash,
        client_id: ClientId::new(r.try_get::<String, _>(0)?),
        redirect_uri: r.try_get(1)?,
        code_challenge: r.try_get(2)?,
        nonce: r.try_get(3)?,
        scope: r.try_get(4)?,
        session_id: SessionId::new(r.try_get::<String, _>(5)?),
        sso_id: r.try_get::<Option<String>, _>(6)?.map(SsoId::new),
        subject: Subject::new(r.try_get::<String, _>(7)?),
        auth_time: UnixMillis(r.try_get(8)?),
        expires_at: UnixMillis(r.try_get(9)?),
    })
}

/// Column `at`, a SHA-256, as a [`TokenHash`].
pub(super) fn hash_at(r: &PgRow, at: usize) -> Result<TokenHash, sqlx::Error> {
    hash_from(&r.try_get::<Vec<u8>, _>(at)?, at)
}

/// The bytes of column `at` as a [`TokenHash`].
pub(super) fn hash_from(bytes: &[u8], at: usize) -> Result<TokenHash, sqlx::Error> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenHash)
        .map_err(|_| sqlx::Error::ColumnDecode {
            index: at.to_string(),
            source: "not a SHA-256: not 32 bytes".into(),
        })
}
