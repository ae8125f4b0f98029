//! The sweep: deleting what can never be used again, a batch per transaction.

use rusqlite::{Connection, params};
use tessera_core::clock::UnixMillis;

use super::connection::{immediate, query};
use crate::StoreError;

/// Rows of each kind one transaction deletes at most. SQLite has one writer: a sweep of a
/// million ended sessions in one transaction would hold every refresh behind it for seconds;
/// in batches, the writer takes the refreshes queued meanwhile between two batches.
pub(super) const SWEEP_BATCH: usize = 64;

/// The ended sessions of one batch (their tokens go first, by their session index). Revoked
/// sessions are kept until their absolute end, so a replay of their tokens is still recognised
/// and audited.
const ENDED_SESSIONS: &str = "SELECT id FROM sessions WHERE absolute_end <= ?1 LIMIT ?2";

/// The other kinds, each at most a batch.
const SWEEPS: [&str; 3] = [
    "DELETE FROM auth_codes WHERE rowid IN \
     (SELECT rowid FROM auth_codes WHERE expires_at <= ?1 - 3600000 LIMIT ?2)",
    "DELETE FROM sso_sessions WHERE rowid IN \
     (SELECT rowid FROM sso_sessions WHERE expires_at <= ?1 LIMIT ?2)",
    "DELETE FROM proxy_sessions WHERE rowid IN \
     (SELECT rowid FROM proxy_sessions WHERE absolute_end <= ?1 LIMIT ?2)",
];

/// What one batch did.
pub(super) struct Batch {
    /// Rows deleted.
    pub(super) removed: u64,
    /// Whether some kind filled its batch, so more may be due.
    pub(super) more: bool,
}

/// Deletes at most [`SWEEP_BATCH`] rows of each kind past its use at `now` (an ended session
/// with all its tokens), in one transaction.
pub(super) fn sweep_batch(c: &mut Connection, now: UnixMillis) -> Result<Batch, StoreError> {
    let op = "sweep";
    let limit = i64::try_from(SWEEP_BATCH).unwrap_or(i64::MAX);
    let tx = immediate(c, op)?;
    let mut removed = 0;
    let mut more = false;
    {
        let ended: Vec<String> = tx
            .prepare_cached(ENDED_SESSIONS)
            .map_err(query(op))?
            .query_map(params![now.0, limit], |row| row.get(0))
            .map_err(query(op))?
            .collect::<Result<_, _>>()
            .map_err(query(op))?;
        more |= ended.len() >= SWEEP_BATCH;
        let mut tokens = tx
            .prepare_cached("DELETE FROM refresh_tokens WHERE session_id = ?1")
            .map_err(query(op))?;
        let mut sessions = tx
            .prepare_cached("DELETE FROM sessions WHERE id = ?1")
            .map_err(query(op))?;
        for id in &ended {
            removed += tokens.execute([id]).map_err(query(op))?;
            removed += sessions.execute([id]).map_err(query(op))?;
        }
        for sql in SWEEPS {
            let n = tx.execute(sql, params![now.0, limit]).map_err(query(op))?;
            more |= n >= SWEEP_BATCH;
            removed += n;
        }
    }
    tx.commit().map_err(query(op))?;
    Ok(Batch {
        removed: u64::try_from(removed).unwrap_or(u64::MAX),
        more,
    })
}
