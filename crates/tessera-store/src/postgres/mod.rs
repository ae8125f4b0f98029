//! The PostgreSQL backend, for several replicas of tessera sharing one database.
//!
//! Every transaction runs at READ COMMITTED (pinned on each connection, whatever the server's
//! default), and correctness across replicas comes from conditional writes, never from a read
//! followed by a write, nor from locks that tessera holds between statements:
//!
//! - Redeeming a refresh token claims it with `UPDATE refresh_tokens … WHERE hash = $1 AND
//!   used_at IS NULL RETURNING …`. A second claim of the same token, on any replica, blocks on
//!   the first one's row lock; when the first commits, PostgreSQL re-checks the WHERE clause on
//!   the new row version, finds `used_at` set and updates nothing; when the first rolls back (a
//!   rejection), the second claims the token. Only a call that claimed nothing then reads the
//!   row, in a new snapshot that sees the winner's commit, successor included, and decides grace
//!   or replay from it. Claim, decision and the writes it implies share one transaction, as in
//!   the SQLite backend; a rejection rolls the claim back.
//! - A code is claimed by the same kind of conditional UPDATE. The revoked tombstone that a reuse
//!   puts in for the session the code names, and the session its first use starts, are both
//!   `INSERT … ON CONFLICT (id) DO NOTHING` on the same primary key: whichever commits first
//!   wins, and the other finds it (a concurrent insert of the same key waits for the first).
//! - A secret is `INSERT … ON CONFLICT DO NOTHING`, then read in a new snapshot.
//! - A proxy session's refresh is claimed by `UPDATE proxy_sessions SET refresh_lease_until = …
//!   WHERE … refreshed_at = $2 AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3)`:
//!   a concurrent claim waits on the winner's row lock, then finds its lease and updates
//!   nothing. `last_seen_at` moves with `GREATEST`, which the same re-check computes from the
//!   newest row version, so it never goes backward.
//!
//! Migrations run under a session-level advisory lock on a connection of their own, so replicas
//! starting together migrate one at a time. Connection failures and an exhausted pool answer
//! [`StoreError::Unavailable`] within `connect_timeout`.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use crate::model::*;
use crate::{Store, StoreError, TABLES, redact_url};

mod connection;
mod redeem;
mod row;
mod snapshot;

pub use connection::{MigrationReport, PostgresOptions, migrate_only};
use connection::{pool, query, run_migrations};
use redeem::redeem_in_transaction;
use row::{
    PROXY_SESSION_COLUMNS, SESSION_COLUMNS, code_from_row, proxy_session_from_row,
    revoke_session_row, session_from_row,
};
use snapshot::{read_snapshot, write_snapshot};

/// Key of the advisory lock held by a sweep, so replicas sweep one at a time.
const SWEEP_LOCK: i64 = 0x7465_7373_6572_6102;

/// The PostgreSQL store: a pool of connections; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    location: String,
    schema: Option<String>,
}

impl PostgresStore {
    /// Connects to the database and runs its migrations (see [`PostgresStore::migrate`]).
    pub async fn connect(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let location = redact_url(&options.url);
        let pool = pool(&options, &location)?;
        if let Err(e) = run_migrations(&pool, options.schema.as_deref(), &location).await {
            pool.close().await;
            return Err(e);
        }
        Ok(PostgresStore {
            pool,
            location,
            schema: options.schema,
        })
    }

    /// Brings the schema up to date, one replica at a time (an advisory lock), and refuses a
    /// database newer than this binary with [`StoreError::SchemaTooNew`].
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        run_migrations(&self.pool, self.schema.as_deref(), &self.location).await
    }

    /// Closes every connection; operations after this fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn secret_or_insert(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let op = "secret_or_insert";
        // Two statements, so that the SELECT's snapshot sees a value another replica committed
        // while this INSERT waited on it.
        sqlx::query(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate.as_slice())
        .execute(&self.pool)
        .await
        .map_err(query(op))?;
        sqlx::query("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(query(op))
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let op = "signing_keys";
        // Byte order for kid, as SQLite compares text.
        let rows = sqlx::query(
            "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY created_at, kid COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query(op))?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.try_get(0)?,
                    alg: r.try_get(1)?,
                    pkcs8: r.try_get(2)?,
                    created_at: UnixMillis(r.try_get(3)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(query(op))
    }

    async fn add_signing_key(&self, key: StoredKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(key.pkcs8.as_slice())
        .bind(key.created_at.0)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(query("add_signing_key"))
    }

    async fn create_sso(&self, sso: SsoSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sso_sessions (handle_hash, id, subject, auth_time, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&sso.handle.0[..])
        .bind(sso.id.as_str())
        .bind(sso.subject.as_str())
        .bind(sso.auth_time.0)
        .bind(sso.expires_at.0)
        .bind(sso.revoked_at.map(|t| t.0))
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(query("create_sso"))
    }

    async fn find_sso(&self, handle: TokenHash) -> Result<Option<SsoSession>, StoreError> {
        let op = "find_sso";
        let row = sqlx::query(
            "SELECT id, subject, auth_time, expires_at, revoked_at FROM sso_sessions
             WHERE handle_hash = $1",
        )
        .bind(&handle.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(query(op))?;
        row.map(|r| {
            Ok(SsoSession {
                handle,
                id: SsoId::new(r.try_get::<String, _>(0)?),
                subject: Subject::new(r.try_get::<String, _>(1)?),
                auth_time: UnixMillis(r.try_get(2)?),
                expires_at: UnixMillis(r.try_get(3)?),
                revoked_at: r.try_get::<Option<i64>, _>(4)?.map(UnixMillis),
            })
        })
        .transpose()
        .map_err(query(op))
    }

    async fn revoke_sso(
        &self,
        id: SsoId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<Vec<SessionId>, StoreError> {
        let op = "revoke_sso";
        let mut tx = self.pool.begin().await.map_err(query(op))?;
        sqlx::query("UPDATE sso_sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .map_err(query(op))?;
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3
             WHERE sso_id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(id.as_str())
        .bind(now.0)
        .bind(reason)
        .fetch_all(&mut *tx)
        .await
        .map_err(query(op))?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0).map(SessionId::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(query(op))?;
        tx.commit().await.map_err(query(op))?;
        Ok(ids)
    }

    async fn insert_code(&self, code: AuthCode) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, nonce, scope,
             session_id, sso_id, subject, auth_time, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&code.hash.0[..])
        .bind(code.client_id.as_str())
        .bind(&code.redirect_uri)
        .bind(code.code_challenge.as_deref())
        .bind(code.nonce.as_deref())
        .bind(&code.scope)
        .bind(code.session_id.as_str())
        .bind(code.sso_id.as_ref().map(SsoId::as_str))
        .bind(code.subject.as_str())
        .bind(code.auth_time.0)
        .bind(code.expires_at.0)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(query("insert_code"))
    }

    async fn redeem_code(
        &self,
        hash: TokenHash,
        now: UnixMillis,
    ) -> Result<CodeRedemption, StoreError> {
        let op = "redeem_code";
        // The claim: of any number of concurrent calls, one updates the row; the others wait on
        // its row lock and then find `used_at` set.
        let claimed = sqlx::query(
            "UPDATE auth_codes SET used_at = $2 WHERE hash = $1 AND used_at IS NULL
             RETURNING client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
             subject, auth_time, expires_at",
        )
        .bind(&hash.0[..])
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(op))?;
        if let Some(row) = claimed {
            let code = code_from_row(hash, &row).map_err(query(op))?;
            return Ok(CodeRedemption::Claimed(Box::new(code)));
        }
        // Used before. The first use may not have started its session yet, and then revoking it
        // would find nothing: put it in revoked already, so that its start is refused. If the
        // session is there (or being inserted: the insert waits for it), this does nothing and
        // the caller revokes it. The row lives as long as the code's (see `sweep`).
        let used = sqlx::query(
            "WITH code AS (
                 SELECT session_id, subject, client_id, sso_id, scope, auth_time, expires_at
                 FROM auth_codes WHERE hash = $1 AND used_at IS NOT NULL
             ), tombstone AS (
                 INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
                     created_at, absolute_end, revoked_at, revoked_reason)
                 SELECT session_id, subject, client_id, sso_id, scope, auth_time,
                     $2, expires_at + 3600000, $2, 'code_reuse' FROM code
                 ON CONFLICT (id) DO NOTHING
             )
             SELECT session_id FROM code",
        )
        .bind(&hash.0[..])
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(op))?;
        match used {
            Some(row) => Ok(CodeRedemption::AlreadyUsed {
                session_id: SessionId::new(row.try_get::<String, _>(0).map_err(query(op))?),
            }),
            None => Ok(CodeRedemption::Unknown),
        }
    }

    async fn start_session(
        &self,
        session: Session,
        first: NewRefreshToken,
    ) -> Result<SessionStart, StoreError> {
        // One statement, so atomic. Session ids are fresh random values: a row with this id is
        // the revoked tombstone a reuse of the code put in (`redeem_code`), and then nothing is
        // inserted at all.
        let inserted = sqlx::query(
            "WITH started AS (
                 INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time,
                     created_at, absolute_end, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id, client_id
             )
             INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
             SELECT $10, id, client_id, $11, $12 FROM started",
        )
        .bind(session.id.as_str())
        .bind(session.subject.as_str())
        .bind(session.client_id.as_str())
        .bind(session.sso_id.as_ref().map(SsoId::as_str))
        .bind(&session.scope)
        .bind(session.auth_time.0)
        .bind(session.created_at.0)
        .bind(session.absolute_end.0)
        .bind(session.revoked_at.map(|t| t.0))
        .bind(&first.hash.0[..])
        .bind(first.issued_at.0)
        .bind(first.expires_at.0)
        .execute(&self.pool)
        .await
        .map_err(query("start_session"))?
        .rows_affected();
        Ok(if inserted == 1 {
            SessionStart::Started
        } else {
            SessionStart::CodeReused
        })
    }

    async fn redeem_refresh_token(&self, request: RedeemRequest) -> Result<Redemption, StoreError> {
        redeem_in_transaction(&self.pool, &request).await
    }

    async fn find_refresh_token(
        &self,
        hash: TokenHash,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        let op = "find_refresh_token";
        let row = sqlx::query(&format!(
            "SELECT t.client_id, t.issued_at, t.expires_at, t.used_at, {SESSION_COLUMNS}
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = $1"
        ))
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(query(op))?;
        row.map(|r| {
            Ok(RefreshTokenInfo {
                client_id: ClientId::new(r.try_get::<String, _>(0)?),
                issued_at: UnixMillis(r.try_get(1)?),
                expires_at: UnixMillis(r.try_get(2)?),
                used_at: r.try_get::<Option<i64>, _>(3)?.map(UnixMillis),
                session: session_from_row(&r, 4)?,
            })
        })
        .transpose()
        .map_err(query(op))
    }

    async fn find_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let op = "find_session";
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query(op))?;
        row.map(|r| session_from_row(&r, 0))
            .transpose()
            .map_err(query(op))
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<bool, StoreError> {
        revoke_session_row(&self.pool, &id, now, reason)
            .await
            .map_err(query("revoke_session"))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(query("ping"))
    }

    async fn count_active_sessions(&self, now: UnixMillis) -> Result<u64, StoreError> {
        sqlx::query("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND absolute_end > $1")
            .bind(now.0)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(query("count_active_sessions"))
    }

    async fn sweep(&self, now: UnixMillis) -> Result<u64, StoreError> {
        let op = "sweep";
        let mut tx = self.pool.begin().await.map_err(query(op))?;
        // One replica sweeps at a time: two sweeps would only delete the same rows, in orders
        // that may deadlock each other.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SWEEP_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(query(op))?;
        let mut removed = 0;
        // Ended sessions go with their tokens. Revoked ones are kept until their absolute end,
        // so a replay of their tokens is still recognised and audited.
        for sql in [
            "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE absolute_end <= $1)",
            "DELETE FROM sessions WHERE absolute_end <= $1",
            "DELETE FROM auth_codes WHERE expires_at <= $1 - 3600000",
            "DELETE FROM sso_sessions WHERE expires_at <= $1",
            "DELETE FROM proxy_sessions WHERE absolute_end <= $1",
        ] {
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

    async fn create_proxy_session(&self, session: ProxySession) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO proxy_sessions ({PROXY_SESSION_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&session.handle.0[..])
        .bind(session.created_at.0)
        .bind(session.last_seen_at.0)
        .bind(session.absolute_end.0)
        .bind(session.refreshed_at.0)
        .bind(session.refresh_lease_until.map(|t| t.0))
        .bind(session.sealed.as_slice())
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(query("create_proxy_session"))
    }

    async fn find_proxy_session(
        &self,
        handle: TokenHash,
    ) -> Result<Option<ProxySession>, StoreError> {
        let op = "find_proxy_session";
        let row = sqlx::query(&format!(
            "SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions WHERE handle_hash = $1"
        ))
        .bind(&handle.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(query(op))?;
        row.as_ref()
            .map(proxy_session_from_row)
            .transpose()
            .map_err(query(op))
    }

    async fn touch_proxy_session(
        &self,
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
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(query("touch_proxy_session"))
    }

    async fn claim_proxy_refresh(
        &self,
        handle: TokenHash,
        refreshed_at: UnixMillis,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError> {
        // One statement, its own transaction: see the module's documentation for why exactly
        // one of any number of concurrent claims, on any replica, updates the row.
        sqlx::query(
            "UPDATE proxy_sessions SET refresh_lease_until = $4
             WHERE handle_hash = $1 AND refreshed_at = $2
             AND (refresh_lease_until IS NULL OR refresh_lease_until <= $3)",
        )
        .bind(&handle.0[..])
        .bind(refreshed_at.0)
        .bind(now.0)
        .bind(lease_until.0)
        .execute(&self.pool)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(query("claim_proxy_refresh"))
    }

    async fn finish_proxy_refresh(
        &self,
        handle: TokenHash,
        outcome: ProxyRefreshOutcome,
    ) -> Result<(), StoreError> {
        // A session deleted while its refresh ran (sign-out, sweep) stays deleted: there is
        // nothing to update, and that is no error.
        let finish = match &outcome {
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
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(query("finish_proxy_refresh"))
    }

    async fn delete_proxy_session(&self, handle: TokenHash) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM proxy_sessions WHERE handle_hash = $1")
            .bind(&handle.0[..])
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(query("delete_proxy_session"))
    }

    async fn export_snapshot(&self) -> Result<Snapshot, StoreError> {
        let op = "export_snapshot";
        let mut tx = self.pool.begin().await.map_err(query(op))?;
        // One snapshot for every table, whatever replicas commit meanwhile.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(query(op))?;
        let snapshot = read_snapshot(&mut tx).await?;
        // Read only: ending it either way is the same; a failure to end it changes nothing.
        let _ = tx.rollback().await;
        Ok(snapshot)
    }

    async fn import_snapshot(&self, snapshot: Snapshot) -> Result<CopyReport, StoreError> {
        let op = "import_snapshot";
        let mut tx = self.pool.begin().await.map_err(query(op))?;
        // Readers go on, writers (a replica started too early, a second copy) wait until this
        // commits: no row can come in between the check and the import. A second copy then
        // finds the tables full and refuses.
        sqlx::query(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            TABLES.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(query(op))?;
        let exists: Vec<String> = TABLES
            .iter()
            .map(|table| format!("EXISTS (SELECT 1 FROM {table})"))
            .collect();
        let row = sqlx::query(&format!("SELECT {}", exists.join(", ")))
            .fetch_one(&mut *tx)
            .await
            .map_err(query(op))?;
        let mut tables = Vec::new();
        for (i, table) in TABLES.iter().enumerate() {
            if row.try_get::<bool, _>(i).map_err(query(op))? {
                tables.push(*table);
            }
        }
        if !tables.is_empty() {
            let _ = tx.rollback().await;
            return Err(StoreError::NotEmpty { tables });
        }
        // A failure drops the transaction, which rolls it back.
        write_snapshot(&mut tx, &snapshot)
            .await
            .map_err(query(op))?;
        tx.commit().await.map_err(query(op))?;
        Ok(snapshot.counts())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    /// Compiles only if they are `Send` (a `raw_sql(…).execute(…)` inside made them not).
    #[test]
    fn connecting_and_migrating_can_be_spawned() {
        fn send<T: Send>(_: T) {}
        let options = PostgresOptions::new("postgres://tessera@db/tessera");
        send(PostgresStore::connect(options.clone()));
        send(migrate_only(&options));
    }
}
