//! The sweep: deleting what can never be used again, one replica at a time, a batch per
//! transaction.

use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;

use super::connection::query;
use crate::StoreError;

/// Key of the advisory lock held by a sweep batch, so replicas sweep one at a time.
const SWEEP_LOCK: i64 = 0x7465_7373_6572_6102;

/// Rows of each kind one transaction deletes at most: a sweep of a million ended sessions in
/// one transaction would hold its locks, and a long-running snapshot, for many seconds.
const SWEEP_BATCH: i64 = 256;

/// Ended sessions of one batch with their tokens (the foreign key cascades; the tokens are
/// deleted first so they are counted). Revoked ones are kept until their absolute end, so a
/// replay of their tokens is still recognised and audited. Then the other kinds, each at most
/// a batch. Each statement answers (rows deleted, whether it filled its batch).
const SWEEPS: [&str; 4] = [
    "WITH ended AS (SELECT id FROM sessions WHERE absolute_end <= $1 LIMIT $2), \
     tokens AS (DELETE FROM refresh_tokens t USING ended WHERE t.session_id = ended.id RETURNING 1), \
     gone AS (DELETE FROM sessions s USING ended WHERE s.id = ended.id RETURNING 1) \
     SELECT (SELECT count(*) FROM tokens) + (SELECT count(*) FROM gone), \
            (SELECT count(*) FROM ended) >= $2",
    "WITH gone AS (DELETE FROM auth_codes WHERE ctid IN \
     (SELECT ctid FROM auth_codes WHERE expires_at <= $1 - 3600000 LIMIT $2) RETURNING 1) \
     SELECT count(*), count(*) >= $2 FROM gone",
    "WITH gone AS (DELETE FROM sso_sessions WHERE ctid IN \
     (SELECT ctid FROM sso_sessions WHERE expires_at <= $1 LIMIT $2) RETURNING 1) \
     SELECT count(*), count(*) >= $2 FROM gone",
    "WITH gone AS (DELETE FROM proxy_sessions WHERE ctid IN \
     (SELECT ctid FROM proxy_sessions WHERE absolute_end <= $1 LIMIT $2) RETURNING 1) \
     SELECT count(*), count(*) >= $2 FROM gone",
];

/// Deletes every row past its use at `now`, [`SWEEP_BATCH`] of each kind per transaction;
/// how many rows went.
pub(super) async fn sweep(pool: &PgPool, now: UnixMillis) -> Result<u64, StoreError> {
    let op = "sweep";
    let mut removed = 0;
    loop {
        let mut tx = pool.begin().await.map_err(query(op))?;
        // One replica sweeps at a time: two sweeps would only delete the same rows, in orders
        // that may deadlock each other.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SWEEP_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(query(op))?;
        let mut more = false;
        for sql in SWEEPS {
            let (n, full): (i64, bool) = sqlx::query_as(sql)
                .bind(now.0)
                .bind(SWEEP_BATCH)
                .fetch_one(&mut *tx)
                .await
                .map_err(query(op))?;
            removed += u64::try_from(n).unwrap_or(0);
            more |= full;
        }
        tx.commit().await.map_err(query(op))?;
        if !more {
            return Ok(removed);
        }
    }
}
