//! The proxy's server-side sessions: found by their cookie's handle, touched on each request,
//! refreshed under a lease. They are created by `row::insert_proxy_session`, shared with the
//! snapshot copy.

use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::clock::UnixMillis;
use tessera_core::token::TokenHash;

use super::connection::query;
use super::row::{PROXY_SESSION_COLUMNS, proxy_session_from_row};
use crate::StoreError;
use crate::model::{ProxyRefreshOutcome, ProxySession};

pub(super) fn find(c: &Connection, handle: TokenHash) -> Result<Option<ProxySession>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions WHERE handle_hash = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([handle.to_hex()], proxy_session_from_row)
            .optional()
    })
    .map_err(query("find_proxy_session"))
}

/// Moves `last_seen_at` forward to `now`, never backward.
pub(super) fn touch(c: &Connection, handle: TokenHash, now: UnixMillis) -> Result<(), StoreError> {
    // MAX: a touch queued behind a later one must not bring the idle timeout closer. A
    // session gone meanwhile is nothing to touch.
    c.prepare_cached(
        "UPDATE proxy_sessions SET last_seen_at = MAX(last_seen_at, ?2)
         WHERE handle_hash = ?1",
    )
    .and_then(|mut s| s.execute(params![handle.to_hex(), now.0]))
    .map(drop)
    .map_err(query("touch_proxy_session"))
}

/// Takes the refresh lease until `lease_until` if the session still holds the tokens of
/// `refreshed_at` and no unexpired lease; whether it did.
pub(super) fn claim_refresh(
    c: &Connection,
    handle: TokenHash,
    refreshed_at: UnixMillis,
    now: UnixMillis,
    lease_until: UnixMillis,
) -> Result<bool, StoreError> {
    // One conditional UPDATE: the writer runs claims one after another, and the first
    // leaves a lease that every later one's WHERE refuses.
    c.prepare_cached(
        "UPDATE proxy_sessions SET refresh_lease_until = ?4
         WHERE handle_hash = ?1 AND refreshed_at = ?2
         AND (refresh_lease_until IS NULL OR refresh_lease_until <= ?3)",
    )
    .and_then(|mut s| {
        s.execute(params![
            handle.to_hex(),
            refreshed_at.0,
            now.0,
            lease_until.0
        ])
    })
    .map(|n| n == 1)
    .map_err(query("claim_proxy_refresh"))
}

/// Stores the new tokens or only releases the lease. A session deleted while its refresh ran
/// (sign-out, sweep) stays deleted: there is nothing to update, and that is no error.
pub(super) fn finish_refresh(
    c: &Connection,
    handle: &TokenHash,
    outcome: &ProxyRefreshOutcome,
) -> Result<(), StoreError> {
    match outcome {
        // The new tokens count as activity: the refresh was made for a request.
        ProxyRefreshOutcome::Refreshed {
            sealed,
            refreshed_at,
        } => c
            .prepare_cached(
                "UPDATE proxy_sessions SET sealed = ?2, refreshed_at = ?3,
                 refresh_lease_until = NULL, last_seen_at = MAX(last_seen_at, ?3)
                 WHERE handle_hash = ?1",
            )
            .and_then(|mut s| s.execute(params![handle.to_hex(), sealed, refreshed_at.0])),
        ProxyRefreshOutcome::Abandoned => c
            .prepare_cached(
                "UPDATE proxy_sessions SET refresh_lease_until = NULL WHERE handle_hash = ?1",
            )
            .and_then(|mut s| s.execute([handle.to_hex()])),
    }
    .map(drop)
    .map_err(query("finish_proxy_refresh"))
}

/// Deletes the session; whether it existed.
pub(super) fn delete(c: &Connection, handle: TokenHash) -> Result<bool, StoreError> {
    c.prepare_cached("DELETE FROM proxy_sessions WHERE handle_hash = ?1")
        .and_then(|mut s| s.execute([handle.to_hex()]))
        .map(|n| n == 1)
        .map_err(query("delete_proxy_session"))
}
