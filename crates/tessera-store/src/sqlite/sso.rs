//! Browser SSO sessions: found by their cookie's handle, touched when they answer, ended on
//! sign-out. They are written by `row::insert_sso`, shared with the snapshot copy.

use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SsoId, Subject};
use tessera_core::token::TokenHash;

use super::connection::query;
use crate::StoreError;
use crate::model::SsoSession;

pub(super) fn find(c: &Connection, handle: TokenHash) -> Result<Option<SsoSession>, StoreError> {
    c.prepare_cached(
        "SELECT id, subject, auth_time, expires_at, revoked_at, last_used_at FROM sso_sessions
         WHERE handle_hash = ?1",
    )
    .and_then(|mut s| {
        s.query_row([handle.to_hex()], |r| {
            Ok(SsoSession {
                handle,
                id: SsoId::new(r.get::<_, String>(0)?),
                subject: Subject::new(r.get::<_, String>(1)?),
                auth_time: UnixMillis(r.get(2)?),
                expires_at: UnixMillis(r.get(3)?),
                revoked_at: r.get::<_, Option<i64>>(4)?.map(UnixMillis),
                last_used_at: UnixMillis(r.get(5)?),
            })
        })
        .optional()
    })
    .map_err(query("find_sso"))
}

pub(super) fn touch(c: &Connection, handle: TokenHash, now: UnixMillis) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE sso_sessions SET last_used_at = ?2 WHERE handle_hash = ?1 AND last_used_at < ?2",
    )
    .and_then(|mut s| s.execute(params![handle.to_hex(), now.0]))
    .map(drop)
    .map_err(query("touch_sso"))
}

/// Ends the SSO session (only it: the sessions started from it live on); whether it was live.
pub(super) fn end(c: &Connection, id: &SsoId, now: UnixMillis) -> Result<bool, StoreError> {
    c.prepare_cached("UPDATE sso_sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
        .and_then(|mut s| s.execute(params![id.as_str(), now.0]))
        .map(|n| n == 1)
        .map_err(query("end_sso"))
}
