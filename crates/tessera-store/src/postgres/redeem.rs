//! The PostgreSQL dialect of the redeem transaction: its claim (or the read that follows a lost
//! claim) and the SQL that executes the writes core computed.

use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use tessera_core::clock::UnixMillis;
use tessera_core::id::ClientId;
use tessera_core::redeem::{FirstUse, Successor, TokenRecord, Writes, Written};
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::{SESSION_COLUMNS, revoke_session_row, session_from_row};
use crate::StoreError;
use crate::model::*;
use crate::redeem::{self, Found};

/// The redeem transaction: claim, decide, apply (the skeleton is [`crate::redeem`]; this is only
/// its PostgreSQL dialect). A rejected claim rolls back, so a refused token is left exactly as
/// it was. The claim records the successor's hash at once: a claim ends in a rotation or in a
/// rejection that rolls back, so it is right either way.
pub(super) async fn redeem_in_transaction(
    pool: &PgPool,
    request: &RedeemRequest,
) -> Result<Redemption, StoreError> {
    let op = "redeem_refresh_token";
    let mut tx = pool.begin().await.map_err(query(op))?;
    let (claimed, found) = claim_or_find(&mut tx, request).await.map_err(query(op))?;
    let effects = redeem::settle(request, claimed, found.as_ref());
    let written = write_effects(tx, &effects.writes, request)
        .await
        .map_err(query(op))?;
    Ok(redeem::answer(effects, written, found))
}

/// Claims the presented token (marks it used, naming its successor) if it is unused, or else
/// reads it; whether this call claimed it, and what it found.
async fn claim_or_find(
    tx: &mut PgConnection,
    request: &RedeemRequest,
) -> Result<(bool, Option<Found>), sqlx::Error> {
    // The claim returns the session too, saving the rotation (the common case) a round trip.
    let claim = sqlx::query(&format!(
        "UPDATE refresh_tokens t SET used_at = $2, used_ip = $3, successor_hash = $4,
             used_user_agent = $5
         FROM sessions s
         WHERE t.hash = $1 AND t.used_at IS NULL AND s.id = t.session_id
         RETURNING t.client_id, t.expires_at, t.used_at, t.used_ip, NULL::BIGINT, {SESSION_COLUMNS}"
    ))
    .bind(&request.hash.0[..])
    .bind(request.now.0)
    .bind(&request.ip)
    .bind(&request.successor.0[..])
    .bind(&request.user_agent)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = claim {
        return Ok((true, Some(found_from_row(&row)?)));
    }
    // Not claimed: unknown, or used by a transaction that has committed (had it rolled back, the
    // claim above would have waited for it and then succeeded). This statement's snapshot is
    // newer than that commit, so it sees the first use and the successor.
    let row = sqlx::query(&format!(
        "SELECT t.client_id, t.expires_at, t.used_at, t.used_ip, n.expires_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
         LEFT JOIN refresh_tokens n ON n.hash = $2
         WHERE t.hash = $1"
    ))
    .bind(&request.hash.0[..])
    .bind(&request.successor.0[..])
    .bind(&request.user_agent)
    .fetch_optional(&mut *tx)
    .await?;
    Ok((false, row.as_ref().map(found_from_row).transpose()?))
}

fn found_from_row(r: &PgRow) -> Result<Found, sqlx::Error> {
    let session = session_from_row(r, 5)?;
    let record = TokenRecord {
        client_id: ClientId::new(r.try_get::<String, _>(0)?),
        session_id: session.id.clone(),
        expires_at: UnixMillis(r.try_get(1)?),
    };
    let first_use = r
        .try_get::<Option<i64>, _>(2)?
        .map(|at| -> Result<FirstUse, sqlx::Error> {
            Ok(FirstUse {
                at: UnixMillis(at),
                ip: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
            })
        })
        .transpose()?;
    Ok(Found {
        record,
        session,
        first_use,
        successor_expires_at: r.try_get::<Option<i64>, _>(4)?.map(UnixMillis),
    })
}

/// Executes the writes core computed and commits them; [`Writes::Nothing`] rolls the claim back.
async fn write_effects(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    writes: &Writes,
    request: &RedeemRequest,
) -> Result<Written, sqlx::Error> {
    let written = match writes {
        // The claim has already marked the token used; committing keeps it.
        Writes::Rotate { successor, .. } => {
            insert_successor(&mut tx, successor, &request.successor).await?;
            Written::Done
        }
        // A revocation that finds the session already revoked lost to a concurrent replay
        // that revoked it after this one read it live: core answers accordingly.
        Writes::RevokeSession {
            session_id,
            at,
            reason,
        } => {
            if revoke_session_row(&mut *tx, session_id, *at, reason).await? {
                Written::Done
            } else {
                Written::SessionAlreadyRevoked
            }
        }
        Writes::Nothing => {
            // A failed rollback changes nothing either (the server aborts the transaction of a
            // broken connection), so it does not turn the decision into an error.
            let _ = tx.rollback().await;
            return Ok(Written::Done);
        }
    };
    tx.commit().await?;
    Ok(written)
}

/// Stores the successor core computed for a rotation, under the hash the claim recorded.
async fn insert_successor(
    tx: &mut PgConnection,
    successor: &Successor,
    hash: &TokenHash,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&hash.0[..])
    .bind(successor.session_id.as_str())
    .bind(successor.client_id.as_str())
    .bind(successor.issued_at.0)
    .bind(successor.expires_at.0)
    .execute(tx)
    .await
    .map(drop)
}
