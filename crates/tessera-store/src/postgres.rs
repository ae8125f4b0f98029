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

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Connection, Executor, Row};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::redeem::{FirstUse, TokenRecord, Writes, Written};
use tessera_core::token::TokenHash;

use crate::model::*;
use crate::redeem::{self, Found};
use crate::{Store, StoreError, TABLES, redact_url};

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_proxy_sessions.sql"),
];

/// Key of the advisory lock held while migrating: "tessera" in ASCII, then 1.
const MIGRATION_LOCK: i64 = 0x7465_7373_6572_6101;
/// Key of the advisory lock held by a sweep, so replicas sweep one at a time.
const SWEEP_LOCK: i64 = 0x7465_7373_6572_6102;

/// How to reach the PostgreSQL database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Connection URL, `postgres://user@host:port/database?…`.
    pub url: String,
    /// Password, overriding one in the URL (so the URL can sit in a config file without it).
    pub password: Option<String>,
    /// Most connections the pool opens (at least 1).
    pub max_connections: u32,
    /// Bound on waiting for a connection, whether a new one or a free pooled one: past it an
    /// operation fails with [`StoreError::Unavailable`] instead of hanging.
    pub connect_timeout: Duration,
    /// Schema to keep the tables in, created if missing; `None` uses the server's `search_path`.
    pub schema: Option<String>,
}

impl PostgresOptions {
    /// Options for `url` with defaults: no separate password, 10 connections, a 5-second
    /// connect timeout, the default schema.
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            password: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            schema: None,
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("schema", &self.schema)
            .finish()
    }
}

/// What a migration run found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version found (0 for an empty database).
    pub found: i64,
    /// The versions this run applied, in order; empty when the database was current.
    pub applied: Vec<i64>,
    /// The schema version now.
    pub current: i64,
}

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

/// Runs the migrations and nothing else (`tessera migrate`): the report says which versions
/// this run applied.
pub async fn migrate_only(options: &PostgresOptions) -> Result<MigrationReport, StoreError> {
    let location = redact_url(&options.url);
    let pool = pool(options, &location)?;
    let report = run_migrations(&pool, options.schema.as_deref(), &location).await;
    pool.close().await;
    report
}

/// A lazy pool: connections open on demand, each set up by `after_connect`.
fn pool(options: &PostgresOptions, location: &str) -> Result<PgPool, StoreError> {
    let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
        location: location.to_owned(),
        source,
    };
    let mut connect =
        PgConnectOptions::from_str(&options.url).map_err(|e| open_error(Box::new(e)))?;
    if let Some(password) = &options.password {
        connect = connect.password(password);
    }
    if connect.get_application_name().is_none() {
        connect = connect.application_name("tessera");
    }
    if matches!(
        connect.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Err(open_error(
            "this tessera is built without TLS for PostgreSQL, so it cannot honour the \
             sslmode the URL asks for"
                .into(),
        ));
    }
    let mut setup = String::from("SET default_transaction_isolation TO 'read committed'");
    if let Some(schema) = &options.schema {
        if schema.is_empty() {
            return Err(open_error("the PostgreSQL schema name is empty".into()));
        }
        setup.push_str("; SET search_path TO ");
        setup.push_str(&quote_identifier(schema));
    }
    let setup: Arc<str> = setup.into();
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.connect_timeout)
        .after_connect(move |connection, _| {
            let setup = Arc::clone(&setup);
            Box::pin(async move { connection.execute(&*setup).await.map(drop) })
        })
        .connect_lazy_with(connect))
}

/// Migrates on a connection taken out of the pool for good: the advisory lock belongs to that
/// session, and closing the connection releases it whatever happened.
async fn run_migrations(
    pool: &PgPool,
    schema: Option<&str>,
    location: &str,
) -> Result<MigrationReport, StoreError> {
    let fail = |source: sqlx::Error| open_error(location, source);
    let mut connection = pool.acquire().await.map_err(fail)?.detach();
    let outcome = migrate_locked(&mut connection, schema, location).await;
    if outcome.is_ok() {
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut connection)
            .await;
        if let Err(e) = unlock {
            let _ = connection.close().await;
            return Err(fail(e));
        }
    }
    // A failure to say goodbye changes nothing: the server drops the session either way.
    let _ = connection.close().await;
    outcome
}

async fn migrate_locked(
    c: &mut PgConnection,
    schema: Option<&str>,
    location: &str,
) -> Result<MigrationReport, StoreError> {
    let fail = |source: sqlx::Error| open_error(location, source);
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    // Waits for a replica that is migrating; migrations can take long, so there is no bound.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *c)
        .await
        .map_err(fail)?;
    if let Some(schema) = schema {
        // Asked first: CREATE SCHEMA IF NOT EXISTS would need the CREATE privilege even when
        // the schema is there already.
        let exists = sqlx::query("SELECT 1 FROM pg_namespace WHERE nspname = $1")
            .bind(schema)
            .fetch_optional(&mut *c)
            .await
            .map_err(fail)?
            .is_some();
        if !exists {
            let create = format!("CREATE SCHEMA {}", quote_identifier(schema));
            c.execute(create.as_str()).await.map_err(fail)?;
        }
    }
    let has_table: bool = sqlx::query("SELECT to_regclass('schema_migrations') IS NOT NULL")
        .fetch_one(&mut *c)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(fail)?;
    if !has_table {
        c.execute(
            "CREATE TABLE schema_migrations (
                version    BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(fail)?;
    }
    let found: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *c)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(fail)?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    let mut applied = Vec::new();
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let mut tx = c.begin().await.map_err(fail)?;
        // A query without arguments goes as a simple query, which may hold many statements.
        tx.execute(*sql).await.map_err(fail)?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        applied.push(version);
    }
    Ok(MigrationReport {
        found,
        applied,
        current: found.max(known),
    })
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

/// Rows per INSERT of an import: each column goes as one array parameter (`UNNEST`), so a batch
/// is one round trip whatever its size; this bounds the size of one message.
const IMPORT_BATCH: usize = 5_000;

/// Every row, each table in primary-key order, text compared byte by byte as SQLite does
/// (`COLLATE "C"`) and hashes by their bytes.
async fn read_snapshot(c: &mut PgConnection) -> Result<Snapshot, StoreError> {
    let secrets = select(
        c,
        "secret",
        "SELECT name, value FROM secrets ORDER BY name COLLATE \"C\"",
        |r| {
            Ok(SecretRow {
                name: r.try_get(0)?,
                value: r.try_get(1)?,
            })
        },
    )
    .await?;
    let signing_keys = select(
        c,
        "signing key",
        "SELECT kid, alg, pkcs8, created_at FROM signing_keys ORDER BY kid COLLATE \"C\"",
        |r| {
            Ok(StoredKey {
                kid: r.try_get(0)?,
                alg: r.try_get(1)?,
                pkcs8: r.try_get(2)?,
                created_at: UnixMillis(r.try_get(3)?),
            })
        },
    )
    .await?;
    let sso_sessions = select(
        c,
        "SSO session",
        "SELECT handle_hash, id, subject, auth_time, expires_at, revoked_at FROM sso_sessions
         ORDER BY handle_hash",
        |r| {
            Ok(SsoSession {
                handle: hash_at(r, 0)?,
                id: SsoId::new(r.try_get::<String, _>(1)?),
                subject: Subject::new(r.try_get::<String, _>(2)?),
                auth_time: UnixMillis(r.try_get(3)?),
                expires_at: UnixMillis(r.try_get(4)?),
                revoked_at: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
            })
        },
    )
    .await?;
    let auth_codes = select(
        c,
        "authorization code",
        "SELECT client_id, redirect_uri, code_challenge, nonce, scope, session_id, sso_id,
         subject, auth_time, expires_at, hash, used_at FROM auth_codes ORDER BY hash",
        |r| {
            Ok(AuthCodeRow {
                code: code_from_row(hash_at(r, 10)?, r)?,
                used_at: r.try_get::<Option<i64>, _>(11)?.map(UnixMillis),
            })
        },
    )
    .await?;
    let sessions = select(
        c,
        "session",
        &format!(
            "SELECT {SESSION_COLUMNS}, s.revoked_reason FROM sessions s ORDER BY s.id COLLATE \"C\""
        ),
        |r| {
            Ok(SessionRow {
                session: session_from_row(r, 0)?,
                revoked_reason: r.try_get(9)?,
            })
        },
    )
    .await?;
    let refresh_tokens = select(
        c,
        "refresh token",
        "SELECT hash, session_id, client_id, issued_at, expires_at, used_at, used_ip,
         successor_hash FROM refresh_tokens ORDER BY hash",
        |r| {
            Ok(RefreshTokenRow {
                hash: hash_at(r, 0)?,
                session_id: SessionId::new(r.try_get::<String, _>(1)?),
                client_id: ClientId::new(r.try_get::<String, _>(2)?),
                issued_at: UnixMillis(r.try_get(3)?),
                expires_at: UnixMillis(r.try_get(4)?),
                used_at: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
                used_ip: r.try_get(6)?,
                successor_hash: r
                    .try_get::<Option<Vec<u8>>, _>(7)?
                    .map(|bytes| hash_from(&bytes, 7))
                    .transpose()?,
            })
        },
    )
    .await?;
    let proxy_sessions = select(
        c,
        "proxy session",
        &format!("SELECT {PROXY_SESSION_COLUMNS} FROM proxy_sessions ORDER BY handle_hash"),
        proxy_session_from_row,
    )
    .await?;
    Ok(Snapshot {
        secrets,
        signing_keys,
        sso_sessions,
        auth_codes,
        sessions,
        refresh_tokens,
        proxy_sessions,
    })
}

/// All rows `sql` selects, each made by `row`; a value that does not decode makes the store
/// [`StoreError::Corrupt`] with `what`.
async fn select<T>(
    c: &mut PgConnection,
    what: &'static str,
    sql: &str,
    row: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    let rows = sqlx::query(sql)
        .fetch_all(&mut *c)
        .await
        .map_err(query("export_snapshot"))?;
    rows.iter()
        .map(|r| {
            row(r).map_err(|e| match e {
                sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                    StoreError::Corrupt { what }
                }
                other => query("export_snapshot")(other),
            })
        })
        .collect()
}

/// Column `at`, a SHA-256, as a [`TokenHash`].
fn hash_at(r: &PgRow, at: usize) -> Result<TokenHash, sqlx::Error> {
    hash_from(&r.try_get::<Vec<u8>, _>(at)?, at)
}

/// The bytes of column `at` as a [`TokenHash`].
fn hash_from(bytes: &[u8], at: usize) -> Result<TokenHash, sqlx::Error> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenHash)
        .map_err(|_| sqlx::Error::ColumnDecode {
            index: at.to_string(),
            source: "not a SHA-256: not 32 bytes".into(),
        })
}

/// Inserts every row of `snapshot`, each table in [`TABLES`] order, [`IMPORT_BATCH`] rows a
/// statement.
async fn write_snapshot(c: &mut PgConnection, snapshot: &Snapshot) -> Result<(), sqlx::Error> {
    for batch in snapshot.secrets.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO secrets (name, value) SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[])",
        )
        .bind(batch.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.value.as_slice()).collect::<Vec<_>>())
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.signing_keys.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BIGINT[])",
        )
        .bind(batch.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.alg.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.pkcs8.as_slice()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.created_at.0).collect::<Vec<_>>())
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.sso_sessions.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO sso_sessions (handle_hash, id, subject, auth_time, expires_at, revoked_at)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                 $5::BIGINT[], $6::BIGINT[])",
        )
        .bind(batch.iter().map(|s| &s.handle.0[..]).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.auth_time.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.expires_at.0).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|s| s.revoked_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.auth_codes.chunks(IMPORT_BATCH) {
        let codes: Vec<&AuthCode> = batch.iter().map(|r| &r.code).collect();
        sqlx::query(
            "INSERT INTO auth_codes (hash, client_id, redirect_uri, code_challenge, nonce, scope,
                 session_id, sso_id, subject, auth_time, expires_at, used_at)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                 $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[],
                 $12::BIGINT[])",
        )
        .bind(codes.iter().map(|c| &c.hash.0[..]).collect::<Vec<_>>())
        .bind(
            codes
                .iter()
                .map(|c| c.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            codes
                .iter()
                .map(|c| c.redirect_uri.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            codes
                .iter()
                .map(|c| c.code_challenge.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(codes.iter().map(|c| c.nonce.as_deref()).collect::<Vec<_>>())
        .bind(codes.iter().map(|c| c.scope.as_str()).collect::<Vec<_>>())
        .bind(
            codes
                .iter()
                .map(|c| c.session_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            codes
                .iter()
                .map(|c| c.sso_id.as_ref().map(SsoId::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(codes.iter().map(|c| c.subject.as_str()).collect::<Vec<_>>())
        .bind(codes.iter().map(|c| c.auth_time.0).collect::<Vec<_>>())
        .bind(codes.iter().map(|c| c.expires_at.0).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|r| r.used_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.sessions.chunks(IMPORT_BATCH) {
        let sessions: Vec<&Session> = batch.iter().map(|r| &r.session).collect();
        sqlx::query(
            "INSERT INTO sessions (id, subject, client_id, sso_id, scope, auth_time, created_at,
                 absolute_end, revoked_at, revoked_reason)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                 $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[])",
        )
        .bind(sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
        .bind(
            sessions
                .iter()
                .map(|s| s.subject.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.sso_id.as_ref().map(SsoId::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.scope.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(sessions.iter().map(|s| s.auth_time.0).collect::<Vec<_>>())
        .bind(sessions.iter().map(|s| s.created_at.0).collect::<Vec<_>>())
        .bind(
            sessions
                .iter()
                .map(|s| s.absolute_end.0)
                .collect::<Vec<_>>(),
        )
        .bind(
            sessions
                .iter()
                .map(|s| s.revoked_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|r| r.revoked_reason.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.refresh_tokens.chunks(IMPORT_BATCH) {
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at,
                 used_at, used_ip, successor_hash)
             SELECT * FROM UNNEST($1::BYTEA[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                 $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::BYTEA[])",
        )
        .bind(batch.iter().map(|t| &t.hash.0[..]).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|t| t.session_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|t| t.client_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|t| t.issued_at.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|t| t.expires_at.0).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|t| t.used_at.map(|t| t.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|t| t.used_ip.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|t| t.successor_hash.as_ref().map(|h| &h.0[..]))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
    }
    for batch in snapshot.proxy_sessions.chunks(IMPORT_BATCH) {
        insert_proxy_sessions(c, batch).await?;
    }
    Ok(())
}

/// Inserts `batch` in one statement, one array parameter a column.
async fn insert_proxy_sessions(
    c: &mut PgConnection,
    batch: &[ProxySession],
) -> Result<(), sqlx::Error> {
    let times = |at: fn(&ProxySession) -> UnixMillis| -> Vec<i64> {
        batch.iter().map(|s| at(s).0).collect()
    };
    sqlx::query(&format!(
        "INSERT INTO proxy_sessions ({PROXY_SESSION_COLUMNS})
         SELECT * FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
             $5::BIGINT[], $6::BIGINT[], $7::BYTEA[])"
    ))
    .bind(batch.iter().map(|s| &s.handle.0[..]).collect::<Vec<_>>())
    .bind(times(|s| s.created_at))
    .bind(times(|s| s.last_seen_at))
    .bind(times(|s| s.absolute_end))
    .bind(times(|s| s.refreshed_at))
    .bind(
        batch
            .iter()
            .map(|s| s.refresh_lease_until.map(|t| t.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|s| s.sealed.as_slice())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *c)
    .await
    .map(drop)
}

const SESSION_COLUMNS: &str = "s.id, s.subject, s.client_id, s.sso_id, s.scope, s.auth_time, s.created_at, s.absolute_end, s.revoked_at";

/// The columns [`proxy_session_from_row`] reads, in its order.
const PROXY_SESSION_COLUMNS: &str = "handle_hash, created_at, last_seen_at, absolute_end, refreshed_at, refresh_lease_until, sealed";

/// The redeem transaction: claim, decide, apply (the skeleton is [`crate::redeem`]; this is only
/// its PostgreSQL dialect). A rejected claim rolls back, so a refused token is left exactly as
/// it was. The claim records the successor's hash at once: a claim ends in a rotation or in a
/// rejection that rolls back, so it is right either way.
async fn redeem_in_transaction(
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
        "UPDATE refresh_tokens t SET used_at = $2, used_ip = $3, successor_hash = $4
         FROM sessions s
         WHERE t.hash = $1 AND t.used_at IS NULL AND s.id = t.session_id
         RETURNING t.client_id, t.expires_at, t.used_at, t.used_ip, NULL::BIGINT, {SESSION_COLUMNS}"
    ))
    .bind(&request.hash.0[..])
    .bind(request.now.0)
    .bind(&request.ip)
    .bind(&request.successor.0[..])
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
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, session_id, client_id, issued_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&request.successor.0[..])
            .bind(successor.session_id.as_str())
            .bind(successor.client_id.as_str())
            .bind(successor.issued_at.0)
            .bind(successor.expires_at.0)
            .execute(&mut *tx)
            .await?;
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

async fn revoke_session_row<'e, E>(
    executor: E,
    id: &SessionId,
    now: UnixMillis,
    reason: &str,
) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id.as_str())
    .bind(now.0)
    .bind(reason)
    .execute(executor)
    .await
    .map(|done| done.rows_affected() == 1)
}

fn session_from_row(r: &PgRow, at: usize) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: SessionId::new(r.try_get::<String, _>(at)?),
        subject: Subject::new(r.try_get::<String, _>(at + 1)?),
        client_id: ClientId::new(r.try_get::<String, _>(at + 2)?),
        sso_id: r.try_get::<Option<String>, _>(at + 3)?.map(SsoId::new),
        scope: r.try_get(at + 4)?,
        auth_time: UnixMillis(r.try_get(at + 5)?),
        created_at: UnixMillis(r.try_get(at + 6)?),
        absolute_end: UnixMillis(r.try_get(at + 7)?),
        revoked_at: r.try_get::<Option<i64>, _>(at + 8)?.map(UnixMillis),
    })
}

/// A row of [`PROXY_SESSION_COLUMNS`].
fn proxy_session_from_row(r: &PgRow) -> Result<ProxySession, sqlx::Error> {
    Ok(ProxySession {
        handle: hash_at(r, 0)?,
        created_at: UnixMillis(r.try_get(1)?),
        last_seen_at: UnixMillis(r.try_get(2)?),
        absolute_end: UnixMillis(r.try_get(3)?),
        refreshed_at: UnixMillis(r.try_get(4)?),
        refresh_lease_until: r.try_get::<Option<i64>, _>(5)?.map(UnixMillis),
        sealed: r.try_get(6)?,
    })
}

fn code_from_row(hash: TokenHash, r: &PgRow) -> Result<AuthCode, sqlx::Error> {
    Ok(AuthCode {
        hash,
        client_id: ClientId::new(r.try_get::<String, _>(0)?),
        redirect_uri: r.try_get(1)?,
        code_challenge: r.try_get(2)?,
        nonce: r.try_get(3)?,
        scope: r.try_get(4)?,
        session_id: SessionId::new(r.try_get::<String, _>(5)?),
        sso_id: r.try_get::<Option<String>, _>(6)?.map(SsoId::new),
        subject: Subject::new(r.try_get::<String, _>(7)?),
        auth_time: UnixMillis(r.try_get(8)?),
        expires_at: UnixMillis(r.try_get(9)?),
    })
}

/// `name` as a quoted SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `e` says the database cannot be reached (rather than that a query is wrong): worth a
/// retry later, and a 503 now.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception. 57P01-03: the server is shutting down, crashed or
            // starting. 53300: too many connections. 25006: a read-only transaction, as on a
            // standby during a failover.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "25006")
        }),
        _ => false,
    }
}

fn unavailable_or(e: sqlx::Error, other: impl FnOnce(sqlx::Error) -> StoreError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable {
            source: Box::new(e),
        }
    } else {
        other(e)
    }
}

fn open_error(location: &str, e: sqlx::Error) -> StoreError {
    unavailable_or(e, |source| StoreError::Open {
        location: location.to_owned(),
        source: Box::new(source),
    })
}

fn query(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        unavailable_or(e, |source| StoreError::Query {
            operation,
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_query_failures_are_not() {
        let timed_out = query("find_session")(sqlx::Error::PoolTimedOut);
        assert!(matches!(timed_out, StoreError::Unavailable { .. }));
        assert!(
            timed_out
                .to_string()
                .starts_with("the database is unavailable: ")
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(
            query("sweep")(sqlx::Error::Io(io)),
            StoreError::Unavailable { .. }
        ));
        assert!(matches!(
            query("sweep")(sqlx::Error::PoolClosed),
            StoreError::Unavailable { .. }
        ));
        assert!(matches!(
            query("sweep")(sqlx::Error::RowNotFound),
            StoreError::Query {
                operation: "sweep",
                ..
            }
        ));
    }

    /// Compiles only if they are `Send` (a `raw_sql(…).execute(…)` inside made them not).
    #[test]
    fn connecting_and_migrating_can_be_spawned() {
        fn send<T: Send>(_: T) {}
        let options = PostgresOptions::new("postgres://tessera@db/tessera");
        send(PostgresStore::connect(options.clone()));
        send(migrate_only(&options));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("t_1"), "\"t_1\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn options_hide_the_password() {
        let options = PostgresOptions {
            password: Some("s3cret".into()),
            ..PostgresOptions::new("postgres://tessera:s3cret@db/tessera")
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
