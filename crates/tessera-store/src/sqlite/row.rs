//! One writer per table and one reader per row shape, shared by the store's methods, the redeem
//! transaction and the snapshot copy.

use rusqlite::{Connection, Row, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use super::connection::query;
use crate::StoreError;
use crate::model::*;

pub(super) const SESSION_COLUMNS: &str = "s.id, s.subject, s.client_id, s.sso_id, s.scope, s.auth_time, s.created_at, s.absolute_end, s.revoked_at";

/// The columns [`proxy_session_from_row`] reads, in its order.
pub(super) const PROXY_SESSION_COLUMNS: &str = "handle_hash, created_at, last_seen_at, absolute_end, refreshed_at, refresh_lease_until, sealed, session_id";

pub(super) fn revoke_session_row(
    c: &Connection,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "UPDATE sessions SET revoked_at = ?2, revoked_reason = ?3 WHERE id = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![id.as_str(), now.0, reason])
    .map(|n| n == 1)
}

/// Deletes the proxy sessions holding tokens of session `id`: the browser signs in again at
/// its next request instead of at its next refresh.
pub(super) fn delete_proxy_sessions_of(c: &Connection, id: &SessionId) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM proxy_sessions WHERE session_id = ?1")?
        .execute([id.as_str()])
        .map(drop)
}

// One writer per table, shared by the single-row methods and `write_snapshot`, so a copied row
// is written exactly as the live path writes it.

pub(super) fn insert_signing_key(c: &Connection, key: &StoredKey) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key.kid, key.alg, key.pkcs8, key.created_at.0])
    .map(drop)
}

pub(super) fn insert_sso(c: &Connection, sso: &SsoSession) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO sso_sessions
         (handle_hash, id, subject, auth_time, expires_at, revoked_at, last_used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        sso.handle.to_hex(),
        sso.id.as_str(),
        sso.subject.as_str(),
        sso.auth_time.0,
        sso.expires_at.0,
        sso.revoked_at.map(|t| t.0),
        sso.last_used_at.0,
    ])
    .map(drop)
}

pub(super) fn insert_code_row(
    c: &Connection,
    code: &AuthCode,
    used_at: Option<UnixMillis>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, nonce, scope,
         session_id, sso_id, subject, auth_time, expires_at, used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        code.hash.to_hex(),
        code.client_id.as_str(),
        code.redirect_uri,
        code.code_challenge,
        code.nonce,
        code.scope,
        code.session_id.as_str(),
        code.sso_id.as_ref().map(SsoId::as_str),
        code.subject.as_str(),
        code.auth_time.0,
        code.expires_at.0,
        used_at.map(|t| t.0),
    ])
    .map(drop)
}

pub(super) fn insert_session_row(
    c: &Connection,
    session: &Session,
    revoked_reason: Option<&str>,
    started_from: Option<&Origin>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time, created_at,
         absolute_end, revoked_at, revoked_reason, created_ip, created_user_agent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        session.id.as_str(),
        session.subject.as_str(),
        session.client_id.as_str(),
        session.sso_id.as_ref().map(SsoId::as_str),
        session.scope,
        session.auth_time.0,
        session.created_at.0,
        session.absolute_end.0,
        session.revoked_at.map(|t| t.0),
        revoked_reason,
        started_from.map(|o| o.ip.as_str()),
        started_from.map(|o| o.user_agent.as_str()),
    ])
    .map(drop)
}

pub(super) fn insert_proxy_session(c: &Connection, session: &ProxySession) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO proxy_sessions ({PROXY_SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        session.handle.to_hex(),
        session.created_at.0,
        session.last_seen_at.0,
        session.absolute_end.0,
        session.refreshed_at.0,
        session.refresh_lease_until.map(|t| t.0),
        session.sealed,
        session.session_id.as_ref().map(SessionId::as_str),
    ])
    .map(drop)
}

pub(super) fn insert_refresh_token(
    tx: &Connection,
    token: &NewRefreshToken,
    session: &SessionId,
    client: &ClientId,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            token.hash.to_hex(),
            session.as_str(),
            client.as_str(),
            token.issued_at.0,
            token.expires_at.0,
        ])
    })
    .map(drop)
    .map_err(query("insert_refresh_token"))
}

pub(super) fn session_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::new(r.get::<_, String>(at)?),
        subject: Subject::new(r.get::<_, String>(at + 1)?),
        client_id: ClientId::new(r.get::<_, String>(at + 2)?),
        sso_id: r.get::<_, Option<String>>(at + 3)?.map(SsoId::new),
        scope: r.get(at + 4)?,
        auth_time: UnixMillis(r.get(at + 5)?),
        created_at: UnixMillis(r.get(at + 6)?),
        absolute_end: UnixMillis(r.get(at + 7)?),
        revoked_at: r.get::<_, Option<i64>>(at + 8)?.map(UnixMillis),
    })
}

/// A row of [`PROXY_SESSION_COLUMNS`].
pub(super) fn proxy_session_from_row(r: &Row<'_>) -> rusqlite::Result<ProxySession> {
    Ok(ProxySession {
        handle: hash_at(r, 0)?,
        created_at: UnixMillis(r.get(1)?),
        last_seen_at: UnixMillis(r.get(2)?),
        absolute_end: UnixMillis(r.get(3)?),
        refreshed_at: UnixMillis(r.get(4)?),
        refresh_lease_until: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
        sealed: r.get(6)?,
        session_id: r.get::<_, Option<String>>(7)?.map(SessionId::new),
    })
}

pub(super) fn code_from_row(hash: TokenHash, r: &Row<'_>) -> rusqlite::Result<AuthCode> {
    Ok(AuthCode {
        hash,
        client_id: ClientId::new(r.get::<_, String>(0)?),
        redirect_uri: r.get(1)?,
        code_challenge: r.get(2)?,
        nonce: r.get(3)?,
        scope: r.get(4)?,
        session_id: SessionId::new(r.get::<_, String>(5)?),
        sso_id: r.get::<_, Option<String>>(6)?.map(SsoId::new),
        subject: Subject::new(r.get::<_, String>(7)?),
        auth_time: UnixMillis(r.get(8)?),
        expires_at: UnixMillis(r.get(9)?),
    })
}

/// Column `at`, a SHA-256 in hex, as a [`TokenHash`].
pub(super) fn hash_at(r: &Row<'_>, at: usize) -> rusqlite::Result<TokenHash> {
    let text = r.get::<_, String>(at)?;
    TokenHash::from_hex(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            at,
            rusqlite::types::Type::Text,
            "not a SHA-256 in hex".into(),
        )
    })
}
