//! The proxy's server-side sessions: created at login, found by their cookie's handle, touched
//! on each request, refreshed under a lease that one replica holds at a time.

use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::SessionId;
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::{PROXY_SESSION_COLUMNS, proxy_session_from_row};
use crate::StoreError;
use crate::model::{ProxyRefreshOutcome, ProxySession};

pub(super) async fn create(pool: &PgPool, session: &ProxySession) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO proxy_sessions ({PROXY_SESSION_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(&session.handle.0[..])
    .bind(session.created_at.0)
    .bind(session.last_seen_at.0)
    .bind(session.absolute_end.0)
    .bind(session.refreshed_at.0)
    .bind(session.refresh_lease_until.map(|t| t.0))
    .bind(session.sealed.as_slice())
    .bind(session.session_id.as_ref().map(SessionId::as_str))
    .execute(pool)
    .await
    .map(drop)
    .map_err(query("create_proxy_session"))
}

pub(super) async fn find(
    pool: &PgPool,
    handle: TokenHash,
) -> Result<Option<ProxySession>, StoreError> {
    let op = "find_proxy_session";
    let row = sqlx::query(&format!(
        "SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions WHERE handle_hash = $1"
    ))
    .bind(&handle.0[..])
    .fetch_optional(pool)
    .await
    .map_err(query(op))?;
    row.as_ref()
        .map(proxy_session_from_row)
        .transpose()
        .map_err(query(op))
}

/// Moves `last_seen_at` forward to `now`, never backward.
pub(super) async fn touch(
    pool: &PgPool,
    handle: TokenHash,
    now: UnixMillis,
) -> Result<(), StoreError> {
    // GREATEST: a touch from a replica with a slower clock must not bring the idle timeout
    // closer. A session gone meanwhile is nothing to touch.
    sqlx::query(
        "UPDATE proxy_sessions SET last_seen_at = GREATEST(last_seen_at, $2)
         WHERE handle_hash = $1",
    )
    .bind(&handle.0[..])
    .bind(now.0)
    .execute(pool)
    .await
    .map(drop)
    .map_err(query("touch_proxy_session"))
}

/// Takes the refresh lease until `lease_until` if the session still holds the tokens of
/// `refreshed_at` and no unexpired lease; whether it did.
pub(super) async fn claim_refresh(
    pool: &PgPool,
    handle: TokenHash,
    refreshed_at: UnixMillis,
    now: UnixMillis,
    lease_until: UnixMillis,
) -> Result<bool, StoreError> {
    // One statement, its own transaction: see the backend's documentation (`postgres/mod.rs`)
    // for why exactly one of any number of concurrent claims, on any replica, updates the row.
    sqlx::query(
        "UPDATE proxy_sessions SET refresh_lease_until = $4
         WHERE handle_hash = $1 AND refreshed_at = $2
         AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3)",
    )
    .bind(&handle.0[..])
    .bind(refreshed_at.0)
    .bind(now.0)
    .bind(lease_until.0)
    .execute(pool)
    .await
    .map(|done| done.rows_affected() == 1)
    .map_err(query("claim_proxy_refresh"))
}

/// Stores the new tokens, or only releases the lease.
pub(super) async fn finish_refresh(
    pool: &PgPool,
    handle: TokenHash,
    outcome: &ProxyRefreshOutcome,
) -> Result<(), StoreError> {
    // A session deleted while its refresh ran (sign-out, sweep) stays deleted: there is
    // nothing to update, and that is no error.
    let finish = match outcome {
        // The new tokens count as activity: the refresh was made for a request.
        ProxyRefreshOutcome::Refreshed {
            sealed,
            refreshed_at,
        } => sqlx::query(
            "UPDATE proxy_sessions SET sealed = $2, refreshed_at = $3,
             refresh_lease_until = NULL, last_seen_at = GREATEST(last_seen_at, $3)
             WHERE handle_hash = $1",
        )
        .bind(&handle.0[..])
        .bind(sealed.as_slice())
        .bind(refreshed_at.0),
        ProxyRefreshOutcome::Abandoned => sqlx::query(
            "UPDATE proxy_sessions SET refresh_lease_until = NULL WHERE handle_hash = $1",
        )
        .bind(&handle.0[..]),
    };
    finish
        .execute(pool)
        .await
        .map(drop)
        .map_err(query("finish_proxy_refresh"))
}

/// Deletes the session; whether it existed.
pub(super) async fn delete(pool: &PgPool, handle: TokenHash) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM proxy_sessions WHERE handle_hash = $1")
        .bind(&handle.0[..])
        .execute(pool)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(query("delete_proxy_session"))
}
