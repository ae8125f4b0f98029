//! Copying a whole SQLite store out and in (`export_snapshot`, `import_snapshot`).

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, Transaction, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::{
    PROXY_SESSION_COLUMNS, SESSION_COLUMNS, code_from_row, hash_at, insert_code_row,
    insert_proxy_session, insert_session_row, insert_signing_key, insert_sso,
    proxy_session_from_row, session_from_row,
};
use crate::model::*;
use crate::{StoreError, TABLES};

/// Every row, each table in primary-key order (SQLite compares text byte by byte, and a hash's
/// lowercase hex sorts as its bytes do).
pub(super) fn read_snapshot(c: &Connection) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        secrets: rows(
            c,
            "secret",
            "SELECT name, value FROM secrets ORDER BY name",
            |r| {
                Ok(SecretRow {
                    name: r.get(0)?,
                    value: r.get(1)?,
                })
            },
        )?,
        signing_keys: rows(
            c,
            "signing key",
            "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY kid",
            |r| {
                Ok(StoredKey {
                    kid: r.get(0)?,
                    alg: r.get(1)?,
                    pkcs8: r.get(2)?,
                    created_at: UnixMillis(r.get(3)?),
                })
            },
        )?,
        sso_sessions: rows(
            c,
            "SSO session",
            "SELECT handle_hash, id, subject, auth_time, expires_at, revoked_at FROM sso_sessions
             ORDER BY handle_hash",
            |r| {
                Ok(SsoSession {
                    handle: hash_at(r, 0)?,
                    id: SsoId::new(r.get::<_, String>(1)?),
                    subject: Subject::new(r.get::<_, String>(2)?),
                    auth_time: UnixMillis(r.get(3)?),
                    expires_at: UnixMillis(r.get(4)?),
                    revoked_at: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
                })
            },
        )?,
        auth_codes: rows(
            c,
            "authorization code",
            "SELECT client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
             subject, auth_time, expires_at, hash, used_at FROM auth_codes ORDER BY hash",
            |r| {
                Ok(AuthCodeRow {
                    code: code_from_row(hash_at(r, 10)?, r)?,
                    used_at: r.get::<_, Option<i64>>(11)?.map(UnixMillis),
                })
            },
        )?,
        sessions: rows(
            c,
            "session",
            &format!("SELECT {SESSION_COLUMNS}, s.revoked_reason FROM sessions s ORDER BY s.id"),
            |r| {
                Ok(SessionRow {
                    session: session_from_row(r, 0)?,
                    revoked_reason: r.get(9)?,
                })
            },
        )?,
        refresh_tokens: rows(
            c,
            "refresh token",
            "SELECT hash, session_id, client_id, issued_at, expires_at, used_at, used_ip,
             successor_hash FROM refresh_tokens ORDER BY hash",
            |r| {
                Ok(RefreshTokenRow {
                    hash: hash_at(r, 0)?,
                    session_id: SessionId::new(r.get::<_, String>(1)?),
                    client_id: ClientId::new(r.get::<_, String>(2)?),
                    issued_at: UnixMillis(r.get(3)?),
                    expires_at: UnixMillis(r.get(4)?),
                    used_at: r.get::<_, Option<i64>>(5)?.map(UnixMillis),
                    used_ip: r.get(6)?,
                    successor_hash: match r.get_ref(7)? {
                        ValueRef::Null => None,
                        _ => Some(hash_at(r, 7)?),
                    },
                })
            },
        )?,
        proxy_sessions: rows(
            c,
            "proxy session",
            &format!("SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions ORDER BY handle_hash"),
            proxy_session_from_row,
        )?,
    })
}

/// All rows `sql` selects, each made by `row`; a value that does not decode makes the store
/// [`StoreError::Corrupt`] with `what`.
fn rows<T>(
    c: &Connection,
    what: &'static str,
    sql: &str,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let fail = |e: rusqlite::Error| match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt { what },
        other => query("export_snapshot")(other),
    };
    let mut stmt = c.prepare(sql).map_err(fail)?;
    let rows = stmt.query_map([], row).map_err(fail)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(fail)
}

/// The tables of [`TABLES`] that hold at least one row.
pub(super) fn occupied_tables(c: &Connection) -> Result<Vec<&'static str>, StoreError> {
    let mut occupied = Vec::new();
    for table in TABLES {
        let any = c
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get::<_, bool>(0)
            })
            .map_err(query("import_snapshot"))?;
        if any {
            occupied.push(table);
        }
    }
    Ok(occupied)
}

/// Inserts every row of `snapshot`, each table in [`TABLES`] order.
pub(super) fn write_snapshot(tx: &Transaction<'_>, snapshot: &Snapshot) -> rusqlite::Result<()> {
    let mut insert = tx.prepare("INSERT INTO secrets (name, value) VALUES (?1, ?2)")?;
    for secret in &snapshot.secrets {
        insert.execute(params![secret.name, secret.value])?;
    }
    for key in &snapshot.signing_keys {
        insert_signing_key(tx, key)?;
    }
    for sso in &snapshot.sso_sessions {
        insert_sso(tx, sso)?;
    }
    for AuthCodeRow { code, used_at } in &snapshot.auth_codes {
        insert_code_row(tx, code, *used_at)?;
    }
    for SessionRow {
        session,
        revoked_reason,
    } in &snapshot.sessions
    {
        insert_session_row(tx, session, revoked_reason.as_deref())?;
    }
    let mut insert = tx.prepare(
        "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at, used_at,
         used_ip, successor_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for token in &snapshot.refresh_tokens {
        insert.execute(params![
            token.hash.to_hex(),
            token.session_id.as_str(),
            token.client_id.as_str(),
            token.issued_at.0,
            token.expires_at.0,
            token.used_at.map(|t| t.0),
            token.used_ip,
            token.successor_hash.as_ref().map(TokenHash::to_hex),
        ])?;
    }
    for session in &snapshot.proxy_sessions {
        insert_proxy_session(tx, session)?;
    }
    Ok(())
}
