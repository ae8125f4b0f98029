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
//!
//! Each concern has its file here, holding only its SQL: `key` (secrets, signing keys), `sso`,
//! `code`, `session`, `redeem`, `proxy_session`, `sweep`, `snapshot`; `row` reads the row shapes
//! they share and `connection` reaches the database.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

use crate::model::*;
use crate::{Store, StoreError, redact_url};

mod code;
mod connection;
mod identity;
mod key;
mod proxy_session;
mod reachability;
mod redeem;
mod row;
mod session;
pub(crate) use session::list_sql as list_sessions_sql;
mod snapshot;
mod sso;
mod sweep;
mod tls;
mod user;

pub use connection::{MigrationReport, PostgresOptions, migrate_only};
use connection::{pool, query, run_migrations, tls_context};
use reachability::Reachability;
use redeem::redeem_in_transaction;
use tls::TlsContext;
pub use tls::{PostgresTls, RootCert, SslMode};

/// The PostgreSQL store: a pool of connections; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    reachability: Arc<Reachability>,
    location: String,
    schema: Option<String>,
    /// Turns a failed TLS handshake into the sentence that names the setting to fix.
    tls: Option<Arc<TlsContext>>,
}

impl PostgresStore {
    /// Connects to the database and runs its migrations (see [`PostgresStore::migrate`]).
    pub async fn connect(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let location = redact_url(&options.url);
        let pool = pool(&options, &location)?;
        let tls = tls_context(&options).map(Arc::new);
        if let Err(e) = run_migrations(&pool, options.schema.as_deref(), &location).await {
            pool.close().await;
            return Err(explain(tls.as_deref(), e));
        }
        let reachability = Reachability::new(&pool.connect_options());
        Ok(PostgresStore {
            pool,
            reachability: Arc::new(reachability),
            location,
            schema: options.schema,
            tls,
        })
    }

    /// Brings the schema up to date, one replica at a time (an advisory lock), and refuses a
    /// database newer than this binary with [`StoreError::SchemaTooNew`].
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        run_migrations(&self.pool, self.schema.as_deref(), &self.location)
            .await
            .map_err(|e| explain(self.tls.as_deref(), e))
    }

    /// Closes every connection; operations after this fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `operation`, failing it at once when it is slow and [`Reachability`] finds nothing
    /// listening at the database's address: a stopped database answers in milliseconds instead
    /// of after `connect_timeout`.
    async fn guarded<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.reachability
            .guard(operation)
            .await
            .map_err(|e| explain(self.tls.as_deref(), e))
    }
}

/// `e`, as the sentence naming the TLS setting to fix when it is a failed TLS handshake.
fn explain(tls: Option<&TlsContext>, e: StoreError) -> StoreError {
    match tls {
        Some(tls) => tls.explain(e),
        None => e,
    }
}

/// Each method is its concern's function in this folder, on the pool.
#[async_trait]
impl Store for PostgresStore {
    async fn secret_or_insert(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        self.guarded(key::secret_or_insert(&self.pool, name, &candidate))
            .await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.guarded(key::signing_keys(&self.pool)).await
    }

    async fn add_signing_key(&self, key: StoredKey) -> Result<(), StoreError> {
        self.guarded(key::add_signing_key(&self.pool, &key)).await
    }

    async fn add_signing_key_unless_fresh(
        &self,
        key: StoredKey,
        fresh_after: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.guarded(key::add_signing_key_unless_fresh(
            &self.pool,
            &key,
            fresh_after,
        ))
        .await
    }

    async fn create_sso(&self, sso: SsoSession) -> Result<(), StoreError> {
        self.guarded(sso::create(&self.pool, &sso)).await
    }

    async fn find_sso(&self, handle: TokenHash) -> Result<Option<SsoSession>, StoreError> {
        self.guarded(sso::find(&self.pool, handle)).await
    }

    async fn touch_sso(&self, handle: TokenHash, now: UnixMillis) -> Result<(), StoreError> {
        self.guarded(sso::touch(&self.pool, handle, now)).await
    }

    async fn end_sso(&self, id: SsoId, now: UnixMillis) -> Result<bool, StoreError> {
        self.guarded(sso::end(&self.pool, &id, now)).await
    }

    async fn insert_code(&self, code: AuthCode) -> Result<(), StoreError> {
        self.guarded(code::insert(&self.pool, &code)).await
    }

    async fn redeem_code(
        &self,
        hash: TokenHash,
        now: UnixMillis,
    ) -> Result<CodeRedemption, StoreError> {
        self.guarded(code::redeem(&self.pool, hash, now)).await
    }

    async fn start_session(
        &self,
        session: Session,
        first: NewRefreshToken,
        started_from: Origin,
    ) -> Result<SessionStart, StoreError> {
        self.guarded(session::start(&self.pool, &session, &first, &started_from))
            .await
    }

    async fn redeem_refresh_token(&self, request: RedeemRequest) -> Result<Redemption, StoreError> {
        self.guarded(redeem_in_transaction(&self.pool, &request))
            .await
    }

    async fn find_refresh_token(
        &self,
        hash: TokenHash,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        self.guarded(session::find_refresh_token(&self.pool, hash))
            .await
    }

    async fn find_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        self.guarded(session::find(&self.pool, &id)).await
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.guarded(session::revoke(&self.pool, &id, now, reason))
            .await
    }

    async fn list_sessions(
        &self,
        filter: SessionFilter,
        now: UnixMillis,
        after: Option<SessionId>,
        limit: u32,
    ) -> Result<SessionPage, StoreError> {
        self.guarded(session::list(
            &self.pool,
            &filter,
            now,
            after.as_ref(),
            limit,
        ))
        .await
    }

    async fn revoke_sessions(
        &self,
        filter: SessionFilter,
        now: UnixMillis,
        reason: &str,
    ) -> Result<Ended, StoreError> {
        self.guarded(session::revoke_many(&self.pool, &filter, now, reason))
            .await
    }

    async fn disable_user(&self, user: DisabledUser) -> Result<Ended, StoreError> {
        self.guarded(user::disable(&self.pool, &user)).await
    }

    async fn enable_user(&self, subject: Subject) -> Result<bool, StoreError> {
        self.guarded(user::enable(&self.pool, &subject)).await
    }

    async fn find_disabled_user(
        &self,
        subject: Subject,
    ) -> Result<Option<DisabledUser>, StoreError> {
        self.guarded(user::find(&self.pool, &subject)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        self.guarded(async { ping.await.map(drop).map_err(query("ping")) })
            .await
    }

    async fn count_active_sessions(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.guarded(session::count_active(&self.pool, now)).await
    }

    async fn sweep(&self, now: UnixMillis) -> Result<u64, StoreError> {
        self.guarded(sweep::sweep(&self.pool, now)).await
    }

    async fn create_proxy_session(&self, session: ProxySession) -> Result<(), StoreError> {
        self.guarded(proxy_session::create(&self.pool, &session))
            .await
    }

    async fn find_proxy_session(
        &self,
        handle: TokenHash,
    ) -> Result<Option<ProxySession>, StoreError> {
        self.guarded(proxy_session::find(&self.pool, handle)).await
    }

    async fn touch_proxy_session(
        &self,
        handle: TokenHash,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.guarded(proxy_session::touch(&self.pool, handle, now))
            .await
    }

    async fn claim_proxy_refresh(
        &self,
        handle: TokenHash,
        refreshed_at: UnixMillis,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let claim =
            proxy_session::claim_refresh(&self.pool, handle, refreshed_at, now, lease_until);
        self.guarded(claim).await
    }

    async fn finish_proxy_refresh(
        &self,
        handle: TokenHash,
        outcome: ProxyRefreshOutcome,
    ) -> Result<(), StoreError> {
        self.guarded(proxy_session::finish_refresh(&self.pool, handle, &outcome))
            .await
    }

    async fn delete_proxy_session(&self, handle: TokenHash) -> Result<bool, StoreError> {
        self.guarded(proxy_session::delete(&self.pool, handle))
            .await
    }

    async fn save_identity(&self, identity: IdentityRecord) -> Result<(), StoreError> {
        self.guarded(identity::save(&self.pool, &identity)).await
    }

    async fn find_identity(&self, subject: Subject) -> Result<Option<IdentityRecord>, StoreError> {
        self.guarded(identity::find(&self.pool, &subject)).await
    }

    async fn claim_revalidation(
        &self,
        subject: Subject,
        checked_at: UnixMillis,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let claim = identity::claim(&self.pool, &subject, checked_at, now, lease_until);
        self.guarded(claim).await
    }

    async fn finish_revalidation(
        &self,
        subject: Subject,
        outcome: RevalidationOutcome,
    ) -> Result<(), StoreError> {
        self.guarded(identity::finish(&self.pool, &subject, &outcome))
            .await
    }

    async fn export_snapshot(&self) -> Result<Snapshot, StoreError> {
        self.guarded(snapshot::export(&self.pool)).await
    }

    async fn import_snapshot(&self, snapshot: Snapshot) -> Result<CopyReport, StoreError> {
        self.guarded(snapshot::import(&self.pool, snapshot)).await
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
