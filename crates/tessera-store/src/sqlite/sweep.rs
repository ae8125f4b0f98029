//! The sweep: deleting what can never be used again.

use rusqlite::Connection;
use tessera_core::clock::UnixMillis;

use super::connection::{immediate, query};
use crate::StoreError;

/// Ended sessions go with their tokens (ON DELETE CASCADE). Revoked ones are kept until their
/// absolute end, so a replay of their tokens is still recognised and audited.
const SWEEPS: [&str; 5] = [
    "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE absolute_end <= ?1)",
    "DELETE FROM sessions WHERE absolute_end <= ?1",
    "DELETE FROM auth_codes WHERE expires_at <= ?1 - 3600000",
    "DELETE FROM sso_sessions WHERE expires_at <= ?1",
    "DELETE FROM proxy_sessions WHERE absolute_end <= ?1",
];

/// Deletes every row past its use at `now`, in one transaction; how many rows went.
pub(super) fn sweep(c: &mut Connection, now: UnixMillis) -> Result<u64, StoreError> {
    let tx = immediate(c, "sweep")?;
    let mut removed = 0;
    for sql in SWEEPS {
        removed += tx.execute(sql, [now.0]).map_err(query("sweep"))?;
    }
    tx.commit().map_err(query("sweep"))?;
    Ok(u64::try_from(removed).unwrap_or(u64::MAX))
}
