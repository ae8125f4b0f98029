//! Reaching the database: options, the pool, migrations under an advisory lock, and telling an
//! unreachable database from a wrong query.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Row};

use super::tls::{self, PostgresTls, TlsContext};
use crate::{StoreError, redact_url};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_proxy_sessions.sql"),
    include_str!("../../migrations/postgres/0003_identities.sql"),
    include_str!("../../migrations/postgres/0004_sso_last_used.sql"),
    include_str!("../../migrations/postgres/0005_session_listing.sql"),
];

/// Key of the advisory lock held while migrating: "tessera" in ASCII, then 1.
const MIGRATION_LOCK: i64 = 0x7465_7373_6572_6101;

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

/// Runs the migrations and nothing else (`tessera migrate`): the report says which versions
/// this run applied.
pub async fn migrate_only(options: &PostgresOptions) -> Result<MigrationReport, StoreError> {
    let location = redact_url(&options.url);
    let pool = pool(options, &location)?;
    let report = run_migrations(&pool, options.schema.as_deref(), &location).await;
    pool.close().await;
    report.map_err(|e| match tls_context(options) {
        Some(context) => context.explain(e),
        None => e,
    })
}

impl PostgresOptions {
    /// The URL's TLS settings (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`), or the one
    /// sentence that says why tessera refuses them.
    pub fn tls(&self) -> Result<PostgresTls, String> {
        tls::split(&self.url).map(|(_, settings)| settings)
    }
}

/// What explains a failed TLS handshake to this database; `None` when the options do not
/// parse (opening reports that).
pub(super) fn tls_context(options: &PostgresOptions) -> Option<TlsContext> {
    let (connect, tls) = connect_options(options).ok()?;
    Some(TlsContext {
        tls,
        host: connect.get_host().to_owned(),
        port: connect.get_port(),
    })
}

/// A lazy pool: connections open on demand, each set up by `after_connect`.
pub(super) fn pool(options: &PostgresOptions, location: &str) -> Result<PgPool, StoreError> {
    let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
        location: location.to_owned(),
        source,
    };
    let (connect, _) = connect_options(options).map_err(open_error)?;
    let setup: Arc<str> = session_setup(options.schema.as_deref())
        .map_err(open_error)?
        .into();
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.connect_timeout)
        .after_connect(move |connection, _| {
            let setup = Arc::clone(&setup);
            Box::pin(async move { connection.execute(&*setup).await.map(drop) })
        })
        .connect_lazy_with(connect))
}

/// The URL's connection options with its TLS settings (see [`tls`](super::tls)), the
/// configured password and tessera's application name.
pub(super) fn connect_options(
    options: &PostgresOptions,
) -> Result<(PgConnectOptions, PostgresTls), Box<dyn std::error::Error + Send + Sync>> {
    let (url, settings) = tls::split(&options.url)?;
    let mut connect = tls::apply(PgConnectOptions::from_str(&url)?, &settings);
    if let Some(password) = &options.password {
        connect = connect.password(password);
    }
    if connect.get_application_name().is_none() {
        connect = connect.application_name("tessera");
    }
    Ok((connect, settings))
}

/// What every new connection runs first: READ COMMITTED whatever the server's default, and the
/// configured schema, if any, as its search path.
fn session_setup(schema: Option<&str>) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut setup = String::from("SET default_transaction_isolation TO 'read committed'");
    if let Some(schema) = schema {
        if schema.is_empty() {
            return Err("the PostgreSQL schema name is empty".into());
        }
        setup.push_str("; SET search_path TO ");
        setup.push_str(&quote_identifier(schema));
    }
    Ok(setup)
}

/// Migrates on a connection taken out of the pool for good: the advisory lock belongs to that
/// session, and closing the connection releases it whatever happened.
pub(super) async fn run_migrations(
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

/// Waits for the migration lock (a replica that is migrating holds it; migrations can take
/// long, so there is no bound), then brings the schema up to date.
async fn migrate_locked(
    c: &mut PgConnection,
    schema: Option<&str>,
    location: &str,
) -> Result<MigrationReport, StoreError> {
    let fail = |source: sqlx::Error| open_error(location, source);
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *c)
        .await
        .map_err(fail)?;
    if let Some(schema) = schema {
        create_schema(c, schema).await.map_err(fail)?;
    }
    let found = schema_version(c).await.map_err(fail)?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    let applied = apply_migrations(c, found).await.map_err(fail)?;
    Ok(MigrationReport {
        found,
        applied,
        current: found.max(known),
    })
}

/// Creates `schema` unless it exists. Asked first: CREATE SCHEMA IF NOT EXISTS would need the
/// CREATE privilege even when the schema is there already.
async fn create_schema(c: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(&mut *c)
        .await?
        .is_some();
    if !exists {
        let create = format!("CREATE SCHEMA {}", quote_identifier(schema));
        c.execute(create.as_str()).await?;
    }
    Ok(())
}

/// The newest migration applied (0 for an empty database), creating the table that records
/// them if it is missing.
async fn schema_version(c: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let has_table: bool = sqlx::query("SELECT to_regclass('schema_migrations') IS NOT NULL")
        .fetch_one(&mut *c)
        .await
        .and_then(|r| r.try_get(0))?;
    if !has_table {
        c.execute(
            "CREATE TABLE schema_migrations (
                version    BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    }
    sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *c)
        .await
        .and_then(|r| r.try_get(0))
}

/// Applies the migrations after version `found`, each in its own transaction with its record;
/// the versions applied, in order.
async fn apply_migrations(c: &mut PgConnection, found: i64) -> Result<Vec<i64>, sqlx::Error> {
    let mut applied = Vec::new();
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let mut tx = c.begin().await?;
        // A query without arguments goes as a simple query, which may hold many statements.
        tx.execute(*sql).await?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        applied.push(version);
    }
    Ok(applied)
}

/// `name` as a quoted SQL identifier.
pub(super) fn quote_identifier(name: &str) -> String {
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

pub(super) fn query(operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
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
