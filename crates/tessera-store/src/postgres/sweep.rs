//! The sweep: deleting what can never be used again, one replica at a time.

use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;

use super::connection::query;
use crate::StoreError;

/// Key of the advisory lock held by a sweep, so replicas sweep one at a time.
const SWEEP_LOCK: i64 = 0x7465_7373_6572_6102;

/// Ended sessions go with their tokens. Revoked ones are kept until their absolute end, so a
/// replay of their tokens is still recognised and audited.
const SWEEPS: [&str; 5] = [
    "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE absolute_end <= $1)",
    "DELETE FROM sessions WHERE absolute_end <= $1",
    "DELETE FROM auth_codes WHERE expires_at <= $1 - 3600000",
    "DELETE FROM sso_sessions WHERE expires_at <= $1",
    "DELETE FROM proxy_sessions WHERE absolute_end <= $1",
];

/// Deletes every row past its use at `now`, in one transaction; how many rows went.
pub(super) async fn sweep(pool: &PgPool, now: UnixMillis) -> Result<u64, StoreError> {
    let op = "sweep";
    let mut tx = pool.begin().await.map_err(query(op))?;
    // One replica sweeps at a time: two sweeps would only delete the same rows, in orders
    // that may deadlock each other.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(query(op))?;
    let mut removed = 0;
    for sql in SWEEPS {
        removed += sqlx::query(sql)
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .map_err(query(op))?
            .rows_affected();
    }
    tx.commit().await.map_err(query(op))?;
    Ok(removed)
}
