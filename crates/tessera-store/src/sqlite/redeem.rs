//! The SQLite dialect of the redeem transaction: its claim, the read after it, and the SQL that
//! executes the writes core computed.

use rusqlite::{Connection, OptionalExtension, Row, Savepoint, Transaction, params};
use tessera_core::clock::UnixMillis;
use tessera_core::id::ClientId;
use tessera_core::redeem::{FirstUse, TokenRecord, Writes, Written};

use super::connection::{immediate, query};
use super::row::{SESSION_COLUMNS, insert_refresh_token, revoke_session_row, session_from_row};
use crate::StoreError;
use crate::model::*;
use crate::redeem::{self, Found};

const OPERATION: &str = "redeem_refresh_token";

/// A redemption waiting for the writer thread, and where its answer goes.
pub(super) struct QueuedRedemption {
    pub(super) request: RedeemRequest,
    pub(super) answer: tokio::sync::oneshot::Sender<Result<Redemption, StoreError>>,
}

/// Redeems `group` in one transaction (group commit, see the module `sqlite`), each redemption
/// in a savepoint of its own, in queue order; answers each after the commit, or each with the
/// commit's failure.
pub(super) fn redeem_group(c: &mut Connection, group: Vec<QueuedRedemption>) {
    let mut tx = match immediate(c, OPERATION) {
        Ok(tx) => tx,
        Err(e) => return answer_all_failed(group.into_iter().map(|q| q.answer), &e),
    };
    let outcomes: Vec<_> = group
        .into_iter()
        .map(|queued| {
            let outcome = redeem_in_savepoint(&mut tx, &queued.request);
            (queued.answer, outcome)
        })
        .collect();
    match tx.commit().map_err(query(OPERATION)) {
        // A caller may have gone away (its request was cancelled); the redemption stands.
        Ok(()) => outcomes.into_iter().for_each(|(answer, outcome)| {
            let _ = answer.send(outcome);
        }),
        Err(e) => answer_all_failed(outcomes.into_iter().map(|(answer, _)| answer), &e),
    }
}

fn answer_all_failed(
    answers: impl Iterator<Item = tokio::sync::oneshot::Sender<Result<Redemption, StoreError>>>,
    failure: &StoreError,
) {
    for answer in answers {
        let _ = answer.send(Err(StoreError::Query {
            operation: OPERATION,
            source: failure.to_string().into(),
        }));
    }
}

/// One redemption: claim, decide, apply (the skeleton is [`crate::redeem`]; this is only its
/// SQLite dialect). A rejected claim rolls its savepoint back, so a refused token is left
/// exactly as it was. The claim records the successor's hash at once: a claim ends in a
/// rotation or in a rejection that rolls back, so it is right either way and saves a second
/// UPDATE of the same row on every rotation.
fn redeem_in_savepoint(
    tx: &mut Transaction<'_>,
    request: &RedeemRequest,
) -> Result<Redemption, StoreError> {
    let savepoint = tx.savepoint().map_err(query(OPERATION))?;
    let claimed = claim_refresh_token(&savepoint, request).map_err(query(OPERATION))?;
    let found = find_presented(&savepoint, request).map_err(query(OPERATION))?;
    let effects = redeem::settle(request, claimed, found.as_ref());
    let written = write_effects(savepoint, &effects.writes, request)?;
    Ok(redeem::answer(effects, written, found))
}

/// Marks the presented token used, naming its successor, if it is unused; whether it was.
fn claim_refresh_token(tx: &Connection, request: &RedeemRequest) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "UPDATE refresh_tokens SET used_at = ?2, used_ip = ?3, successor_hash = ?4,
         used_user_agent = ?5 WHERE hash = ?1 AND used_at IS NULL",
    )?
    .execute(params![
        request.hash.to_hex(),
        request.now.0,
        request.ip,
        request.successor.to_hex(),
        request.user_agent,
    ])
    .map(|n| n == 1)
}

/// The presented token as the claim left it, with its session and the successor's expiry.
fn find_presented(tx: &Connection, request: &RedeemRequest) -> rusqlite::Result<Option<Found>> {
    tx.prepare_cached(&format!(
        "SELECT t.client_id, t.expires_at, t.used_at, t.used_ip, n.expires_at, {SESSION_COLUMNS}
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
         LEFT JOIN refresh_tokens n ON n.hash = ?2
         WHERE t.hash = ?1"
    ))?
    .query_row(
        [request.hash.to_hex(), request.successor.to_hex()],
        found_from_row,
    )
    .optional()
}

fn found_from_row(r: &Row<'_>) -> rusqlite::Result<Found> {
    let session = session_from_row(r, 5)?;
    let record = TokenRecord {
        client_id: ClientId::new(r.get::<_, String>(0)?),
        session_id: session.id.clone(),
        expires_at: UnixMillis(r.get(1)?),
    };
    let first_use = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<String>>(3)?) {
        (Some(at), ip) => Some(FirstUse {
            at: UnixMillis(at),
            ip: ip.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    Ok(Found {
        record,
        session,
        first_use,
        successor_expires_at: r.get::<_, Option<i64>>(4)?.map(UnixMillis),
    })
}

/// Executes the writes core computed and keeps them; [`Writes::Nothing`] keeps nothing, so
/// dropping the savepoint rolls the claim back.
fn write_effects(
    tx: Savepoint<'_>,
    writes: &Writes,
    request: &RedeemRequest,
) -> Result<Written, StoreError> {
    let op = OPERATION;
    let written = match writes {
        // The claim has already marked the token used; committing keeps it.
        Writes::Rotate { successor, .. } => {
            let token = NewRefreshToken {
                hash: request.successor,
                issued_at: successor.issued_at,
                expires_at: successor.expires_at,
            };
            insert_refresh_token(&tx, &token, &successor.session_id, &successor.client_id)?;
            Written::Done
        }
        Writes::RevokeSession {
            session_id,
            at,
            reason,
        } => {
            if revoke_session_row(&tx, session_id, *at, reason).map_err(query(op))? {
                Written::Done
            } else {
                Written::SessionAlreadyRevoked
            }
        }
        Writes::Nothing => return Ok(Written::Done),
    };
    tx.commit().map_err(query(op))?;
    Ok(written)
}
