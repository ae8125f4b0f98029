//! Storage of tessera behind one trait, [`Store`], whose heart is the atomic
//! [`Store::redeem_refresh_token`]: the conditional claim of a token and every write its
//! decision implies happen in one transaction. SQLite is the embedded default; PostgreSQL serves
//! several replicas sharing one database. [`StorageUrl`] tells which a configured URL names.
#![warn(missing_docs)]

mod model;
mod postgres;
mod redeem;
mod sqlite;
mod table;

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SessionId, SsoId, Subject};
use tessera_core::token::TokenHash;

pub use model::*;
pub use postgres::{
    MigrationReport, PostgresOptions, PostgresStore, PostgresTls, RootCert, SslMode, migrate_only,
};
pub use sqlite::{SqliteStore, Synchronous};

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open the database at {location}: {source}")]
    Open {
        /// Where the database was looked for.
        location: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database is newer than this binary.
    #[error(
        "the database schema is version {found}, newer than this tessera knows ({known}); upgrade tessera"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
    /// A query failed.
    #[error("the database failed during {operation}: {source}")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database cannot be reached right now: the connection failed or broke, or no pooled
    /// connection became free within the configured bound. Worth retrying later (HTTP 503
    /// `temporarily_unavailable`), unlike [`StoreError::Query`].
    #[error("the database is unavailable: {source}")]
    Unavailable {
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS connection to PostgreSQL failed (a certificate its `sslrootcert` does not
    /// trust, a host name the certificate does not hold, a server without TLS): one sentence
    /// that names the `storage.url` parameter to fix. Answered like [`StoreError::Unavailable`].
    #[error("{reason}")]
    Tls {
        /// The sentence.
        reason: String,
    },
    /// A stored row does not decode.
    #[error("a stored {what} is corrupt")]
    Corrupt {
        /// What kind of row.
        what: &'static str,
    },
    /// A snapshot was to be imported into a database that already holds data
    /// ([`Store::import_snapshot`]): a copy never merges two installations, so nothing was
    /// written.
    #[error(
        "the target database is not empty (it holds rows in {}): a copy goes only into an \
         empty database, so nothing was written",
        .tables.join(", ")
    )]
    NotEmpty {
        /// The tables that hold rows, in [`TABLES`] order.
        tables: Vec<&'static str>,
    },
}

/// Every table a snapshot holds, in the order an import fills them (a refresh token after its
/// session).
pub const TABLES: [&str; 9] = [
    "secrets",
    "signing_keys",
    "sso_sessions",
    "auth_codes",
    "sessions",
    "refresh_tokens",
    "proxy_sessions",
    "identities",
    "disabled_users",
];

/// Copies every row of `from` into `to`, which must be empty (else
/// [`StoreError::NotEmpty`], and `to` is left as it was): `tessera storage copy`, to move an
/// embedded installation to PostgreSQL (or back) without losing a session. Sessions, refresh
/// tokens with their first use and successor, codes, SSO sessions, signing keys, secrets (the
/// rotation key among them) and the proxy's sessions all come across, so a token or a cookie
/// answers on `to` exactly as it would have on `from`.
///
/// The source is read in one consistent snapshot and the target written in one transaction:
/// a failure leaves the target as it was. The whole snapshot is held in memory (see
/// [`Snapshot`]); nothing streams. Run it with the servers stopped: what `from` records after
/// the snapshot is not copied.
pub async fn copy_store(from: &dyn Store, to: &dyn Store) -> Result<CopyReport, StoreError> {
    let snapshot = from.export_snapshot().await?;
    to.import_snapshot(snapshot).await
}

/// The statement [`Store::list_sessions`] runs for `filter` (and a page `after` an id) on
/// PostgreSQL (`postgres`) or SQLite, so a benchmark or an operator can see its plan. Its
/// parameters, in order: now, the filter's subject, its client, `after`, and the page's limit
/// plus one (`$1`… on PostgreSQL, `?1`… on SQLite).
pub fn list_sessions_sql(
    postgres: bool,
    filter: &SessionFilter,
    after: Option<&SessionId>,
) -> String {
    if postgres {
        postgres::list_sessions_sql(filter, after)
    } else {
        sqlite::list_sessions_sql(filter, after)
    }
}

/// Where the data lives, as a storage URL names it.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `sqlite://PATH`: an embedded SQLite database file (`sqlite:///abs/path` or
    /// `sqlite://relative/path`).
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`: a PostgreSQL connection URL, kept whole (it may hold
    /// a password, which [`fmt::Debug`] hides).
    Postgres(String),
}

impl StorageUrl {
    /// Parses a storage URL; the error says what is accepted (and never repeats a password).
    pub fn parse(text: &str) -> Result<StorageUrl, String> {
        let text = text.trim();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "storage URL {:?} has no scheme: expected sqlite://PATH (e.g. sqlite://{}), \
                 postgres://… or postgresql://…",
                redact_url(text),
                redact_url(text),
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" if rest.is_empty() => {
                Err("storage URL sqlite:// names no file: expected sqlite://PATH".to_owned())
            }
            "sqlite" if rest.contains(['?', '#']) => Err(format!(
                "storage URL {text:?} has options: sqlite://PATH takes none"
            )),
            "sqlite" => Ok(StorageUrl::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" => Ok(StorageUrl::Postgres(text.to_owned())),
            _ => Err(format!(
                "storage URL scheme {scheme:?} is not supported: expected sqlite://PATH, \
                 postgres://… or postgresql://…"
            )),
        }
    }
}

impl fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StorageUrl::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

/// `url` with its passwords (in the user info, or a `password=` query parameter) replaced by
/// `***`, fit for logs and error messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (user_info, host) = authority.split_at(at);
            match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Everything tessera persists. Implementations keep every method atomic.
#[async_trait]
pub trait Store: Send + Sync {
    /// Returns the secret `name`, storing `candidate` first if there is none yet. Every replica
    /// thus ends up with the same value, whichever wrote first.
    async fn secret_or_insert(&self, name: &str, candidate: Vec<u8>)
    -> Result<Vec<u8>, StoreError>;

    /// All signing keys, oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// Adds a signing key.
    async fn add_signing_key(&self, key: StoredKey) -> Result<(), StoreError>;

    /// Adds `key` unless a key of its algorithm created after `fresh_after` exists; whether it
    /// was added. Atomic across replicas: of several that find rotation due at once (a first
    /// start of `replicas: 3`, a rotation interval ending), exactly one adds its key; the
    /// others find it when they read the keys afterwards.
    async fn add_signing_key_unless_fresh(
        &self,
        key: StoredKey,
        fresh_after: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Records a browser SSO session.
    async fn create_sso(&self, sso: SsoSession) -> Result<(), StoreError>;

    /// Finds a browser SSO session by the hash of its cookie handle.
    async fn find_sso(&self, handle: TokenHash) -> Result<Option<SsoSession>, StoreError>;

    /// Records that the SSO session `handle` answered an authorization request at `now`, its
    /// idle clock's new start; never moves it backward.
    async fn touch_sso(&self, handle: TokenHash, now: UnixMillis) -> Result<(), StoreError>;

    /// Ends an SSO session, so it answers no authorization request again; `true` when it was
    /// live until now. The sessions started from it live on: a browser signing out ends its own
    /// app's session (see [`Store::revoke_session`]), not the person's kubectl sessions; only
    /// [`Store::revoke_sessions`] and [`Store::disable_user`] end those.
    async fn end_sso(&self, id: SsoId, now: UnixMillis) -> Result<bool, StoreError>;

    /// Stores an authorization code.
    async fn insert_code(&self, code: AuthCode) -> Result<(), StoreError>;

    /// Claims an authorization code: the first call gets it, later calls learn it was used. A
    /// later call also revokes in advance the session the first one may not have started yet,
    /// so that [`Store::start_session`] refuses it.
    async fn redeem_code(
        &self,
        hash: TokenHash,
        now: UnixMillis,
    ) -> Result<CodeRedemption, StoreError>;

    /// Starts a session with its first refresh token, atomically, unless the code that names
    /// the session has been presented again since it was claimed (RFC 6749 §4.1.2).
    async fn start_session(
        &self,
        session: Session,
        first: NewRefreshToken,
        started_from: Origin,
    ) -> Result<SessionStart, StoreError>;

    /// Redeems a refresh token (DESIGN.md "Redeeming a refresh token"), in one transaction.
    async fn redeem_refresh_token(&self, request: RedeemRequest) -> Result<Redemption, StoreError>;

    /// Finds the refresh token with this hash and its session (revocation, introspection).
    async fn find_refresh_token(
        &self,
        hash: TokenHash,
    ) -> Result<Option<RefreshTokenInfo>, StoreError>;

    /// Finds a session.
    async fn find_session(&self, id: SessionId) -> Result<Option<Session>, StoreError>;

    /// Revokes a session, and deletes the proxy sessions holding its tokens; `true` when it was
    /// live until now.
    async fn revoke_session(
        &self,
        id: SessionId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// The live sessions `filter` names (neither revoked, nor past their absolute end, nor with
    /// every refresh token expired), in id order after `after`, at most `limit`.
    async fn list_sessions(
        &self,
        filter: SessionFilter,
        now: UnixMillis,
        after: Option<SessionId>,
        limit: u32,
    ) -> Result<SessionPage, StoreError>;

    /// Revokes, in one transaction, every live session `filter` names and deletes the proxy
    /// sessions holding their tokens; when the filter names a person and no client, their SSO
    /// sessions end too (nothing signs them in silently again). An empty filter revokes nothing.
    async fn revoke_sessions(
        &self,
        filter: SessionFilter,
        now: UnixMillis,
        reason: &str,
    ) -> Result<Ended, StoreError>;

    /// Disables a person, in one transaction: records `user` (keeping an earlier record), and
    /// ends every session and SSO session they have (`reason` `user_disabled`).
    async fn disable_user(&self, user: DisabledUser) -> Result<Ended, StoreError>;

    /// Enables a disabled person again; whether they were disabled.
    async fn enable_user(&self, subject: Subject) -> Result<bool, StoreError>;

    /// Whether, since when and by whom a person is disabled.
    async fn find_disabled_user(
        &self,
        subject: Subject,
    ) -> Result<Option<DisabledUser>, StoreError>;

    /// Whether the database answers at all (`SELECT 1`): readiness, which must stay cheap however
    /// many rows there are.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Sessions neither revoked nor past their absolute end.
    async fn count_active_sessions(&self, now: UnixMillis) -> Result<u64, StoreError>;

    /// Deletes what can never be used again (ended sessions and their tokens, old codes, proxy
    /// sessions past their absolute end); returns how many rows went.
    async fn sweep(&self, now: UnixMillis) -> Result<u64, StoreError>;

    /// Records a new proxy session.
    async fn create_proxy_session(&self, session: ProxySession) -> Result<(), StoreError>;

    /// Finds a proxy session by the hash of its cookie handle.
    async fn find_proxy_session(
        &self,
        handle: TokenHash,
    ) -> Result<Option<ProxySession>, StoreError>;

    /// Moves a proxy session's `last_seen_at` forward to `now` (never backward).
    async fn touch_proxy_session(
        &self,
        handle: TokenHash,
        now: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Claims the right to refresh a proxy session's tokens, for every replica at once: true
    /// when the session still holds the tokens obtained at `refreshed_at` and no unexpired lease,
    /// in which case it now holds a lease until `lease_until`. Exactly one of any number of
    /// concurrent claims for the same `refreshed_at` wins, so a one-time refresh token is
    /// presented once.
    async fn claim_proxy_refresh(
        &self,
        handle: TokenHash,
        refreshed_at: UnixMillis,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Ends a refresh claimed with [`Store::claim_proxy_refresh`]: stores the new tokens, or
    /// only releases the lease.
    async fn finish_proxy_refresh(
        &self,
        handle: TokenHash,
        outcome: ProxyRefreshOutcome,
    ) -> Result<(), StoreError>;

    /// Deletes a proxy session (sign-out, timeout, refused refresh); true when it existed.
    async fn delete_proxy_session(&self, handle: TokenHash) -> Result<bool, StoreError>;

    /// Stores what a connector said of a person at login, replacing what was known (a new
    /// login clears `disabled_at` and any lease: the directory has just vouched for them).
    async fn save_identity(&self, identity: IdentityRecord) -> Result<(), StoreError>;

    /// What a connector last said of `subject`, if it ever did.
    async fn find_identity(&self, subject: Subject) -> Result<Option<IdentityRecord>, StoreError>;

    /// Claims the right to re-validate `subject` with its directory, for every replica at once:
    /// true only for the one caller that finds it still checked at `checked_at`, not disabled,
    /// and without an unexpired lease; it holds the lease until `lease_until`.
    async fn claim_revalidation(
        &self,
        subject: Subject,
        checked_at: UnixMillis,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Ends a re-validation claimed with [`Store::claim_revalidation`].
    async fn finish_revalidation(
        &self,
        subject: Subject,
        outcome: RevalidationOutcome,
    ) -> Result<(), StoreError>;

    /// Reads every persisted row, in one consistent snapshot of the database (see
    /// [`Snapshot`] for its order and its memory).
    async fn export_snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Writes `snapshot` into this store, in one transaction, if the store holds no row in any
    /// of [`TABLES`]; otherwise writes nothing and fails with [`StoreError::NotEmpty`] (never a
    /// merge). Answers how many rows of each table it wrote. Any failure leaves the store as it
    /// was.
    async fn import_snapshot(&self, snapshot: Snapshot) -> Result<CopyReport, StoreError>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_a_path() {
        assert_eq!(
            StorageUrl::parse("sqlite:///var/lib/tessera/tessera.db"),
            Ok(StorageUrl::Sqlite(PathBuf::from(
                "/var/lib/tessera/tessera.db"
            )))
        );
        assert_eq!(
            StorageUrl::parse("sqlite://data/tessera.db"),
            Ok(StorageUrl::Sqlite(PathBuf::from("data/tessera.db")))
        );
        assert!(StorageUrl::parse("sqlite://").is_err());
        assert!(StorageUrl::parse("sqlite://x.db?mode=rwc").is_err());
    }

    #[test]
    fn postgres_urls_are_kept_whole() {
        for url in [
            "postgres://tessera:pw@db:5432/tessera?sslmode=disable",
            "postgresql://db/tessera",
        ] {
            assert_eq!(
                StorageUrl::parse(url),
                Ok(StorageUrl::Postgres(url.to_owned()))
            );
        }
    }

    #[test]
    fn anything_else_is_refused_with_what_is_accepted() {
        for bad in ["mysql://db/x", "/var/lib/tessera.db", ""] {
            let error = StorageUrl::parse(bad).unwrap_err();
            assert!(error.contains("sqlite://PATH"), "{error}");
            assert!(error.contains("postgres://"), "{error}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let url =
            StorageUrl::parse("postgres://tessera:s3cret@db/tessera?password=s3cret").unwrap();
        let shown = format!("{url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            redact_url("postgres://tessera:s3cret@db:5432/tessera?password=s3cret&sslmode=disable"),
            "postgres://tessera:***@db:5432/tessera?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://db/tessera"), "postgres://db/tessera");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        let error = StorageUrl::parse("mysql://root:s3cret@db/x").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
