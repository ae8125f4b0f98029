//! Sessions (one login of one client) and the lookups of their refresh tokens; the redeem itself
//! is [`super::redeem`]. Rows are written by `row`'s writers, shared with the snapshot copy.

use rusqlite::{Connection, OptionalExtension};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId};
use tessera_core::token::TokenHash;

use super::connection::{immediate, query};
use super::row::{SESSION_COLUMNS, insert_refresh_token, insert_session_row, session_from_row};
use crate::StoreError;
use crate::model::{NewRefreshToken, RefreshTokenInfo, Session, SessionStart};

/// Starts `session` with its `first` refresh token, unless a reuse of its code revoked it in
/// advance.
pub(super) fn start(
    c: &mut Connection,
    session: &Session,
    first: &NewRefreshToken,
) -> Result<SessionStart, StoreError> {
    let tx = immediate(c, "start_session")?;
    // Session ids are fresh random values: a row that is there already was put in,
    // revoked, by a reuse of the code that names it (`redeem_code`).
    let revoked_in_advance = tx
        .query_row(
            "SELECT 1 FROM sessions WHERE id = ?1",
            [session.id.as_str()],
            |_| Ok(()),
        )
        .optional()
        .map_err(query("start_session"))?
        .is_some();
    if revoked_in_advance {
        return Ok(SessionStart::CodeReused);
    }
    insert_session_row(&tx, session, None).map_err(query("start_session"))?;
    insert_refresh_token(&tx, first, &session.id, &session.client_id)?;
    tx.commit().map_err(query("start_session"))?;
    Ok(SessionStart::Started)
}

/// The refresh token with this hash, with its session.
pub(super) fn find_refresh_token(
    c: &Connection,
    hash: TokenHash,
) -> Result<Option<RefreshTokenInfo>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT t.client_id, t.issued_at, t.expires_at, t.used_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([hash.to_hex()], |r| {
            Ok(RefreshTokenInfo {
                client_id: ClientId::new(r.get::<_, String>(0)?),
                issued_at: UnixMillis(r.get(1)?),
                expires_at: UnixMillis(r.get(2)?),
                used_at: r.get::<_, Option<i64>>(3)?.map(UnixMillis),
                session: session_from_row(r, 4)?,
            })
        })
        .optional()
    })
    .map_err(query("find_refresh_token"))
}

pub(super) fn find(c: &Connection, id: &SessionId) -> Result<Option<Session>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([id.as_str()], |r| session_from_row(r, 0))
            .optional()
    })
    .map_err(query("find_session"))
}

/// Sessions neither revoked nor past their absolute end.
pub(super) fn count_active(c: &Connection, now: UnixMillis) -> Result<u64, StoreError> {
    c.query_row(
        "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND absolute_end > ?1",
        [now.0],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| u64::try_from(n).unwrap_or(0))
    .map_err(query("count_active_sessions"))
}
