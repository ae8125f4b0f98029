//! Authorization codes: claimed once at the token endpoint. A second presentation revokes in
//! advance the session the first one starts (RFC 6749 §4.1.2). Codes are written by
//! `row::insert_code_row`, shared with the snapshot copy.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tessera_core::clock::UnixMillis;
use tessera_core::token::TokenHash;

use super::connection::{immediate, query};
use super::row::code_from_row;
use crate::StoreError;
use crate::model::{AuthCode, CodeRedemption};

/// The first call claims the code; a later one learns the session it named, revoked in advance.
/// One transaction, on the one writer: claims run one after another.
pub(super) fn redeem(
    c: &mut Connection,
    hash: TokenHash,
    now: UnixMillis,
) -> Result<CodeRedemption, StoreError> {
    let tx = immediate(c, "redeem_code")?;
    let claimed = claim(&tx, hash, now).map_err(query("redeem_code"))?;
    if !claimed {
        revoke_in_advance(&tx, hash, now).map_err(query("redeem_code"))?;
    }
    let code = find(&tx, hash).map_err(query("redeem_code"))?;
    tx.commit().map_err(query("redeem_code"))?;
    Ok(match code {
        None => CodeRedemption::Unknown,
        Some(code) if claimed => CodeRedemption::Claimed(Box::new(code)),
        Some(code) => CodeRedemption::AlreadyUsed {
            session_id: code.session_id,
        },
    })
}

/// Marks the code used if it is not yet; whether this call did.
fn claim(tx: &Transaction<'_>, hash: TokenHash, now: UnixMillis) -> rusqlite::Result<bool> {
    tx.execute(
        "UPDATE auth_codes SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
        params![hash.to_hex(), now.0],
    )
    .map(|n| n == 1)
}

/// The first use may not have started its session yet, and then revoking it would find
/// nothing: put it in revoked already, so that its start is refused. The row lives as long as
/// the code's (see `sweep`).
fn revoke_in_advance(
    tx: &Transaction<'_>,
    hash: TokenHash,
    now: UnixMillis,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
         created_at, absolute_end, revoked_at, revoked_reason)
         SELECT session_id, subject, client_id, sso_id, scope, auth_time,
         ?2, expires_at + 3600000, ?2, 'code_reuse' FROM auth_codes WHERE hash = ?1
         ON CONFLICT (id) DO NOTHING",
        params![hash.to_hex(), now.0],
    )
    .map(drop)
}

fn find(tx: &Transaction<'_>, hash: TokenHash) -> rusqlite::Result<Option<AuthCode>> {
    tx.query_row(
        "SELECT client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
         subject, auth_time, expires_at FROM auth_codes WHERE hash = ?1",
        [hash.to_hex()],
        |r| code_from_row(hash, r),
    )
    .optional()
}
