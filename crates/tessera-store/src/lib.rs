//! Storage of tessera behind one trait, [`Store`], whose heart is the atomic
//! [`Store::redeem_refresh_token`]: the conditional claim of a token and every write its
//! decision implies happen in one transaction. SQLite is the embedded default.
#![warn(missing_docs)]

mod model;
mod sqlite;

use async_trait::async_trait;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{SessionId, SsoId};
use tessera_core::token::TokenHash;

pub use model::*;
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
    /// A stored row does not decode.
    #[error("a stored {what} is corrupt")]
    Corrupt {
        /// What kind of row.
        what: &'static str,
    },
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

    /// Records a browser SSO session.
    async fn create_sso(&self, sso: SsoSession) -> Result<(), StoreError>;

    /// Finds a browser SSO session by the hash of its cookie handle.
    async fn find_sso(&self, handle: TokenHash) -> Result<Option<SsoSession>, StoreError>;

    /// Revokes an SSO session and every session started from it; returns those sessions.
    async fn revoke_sso(
        &self,
        id: SsoId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<Vec<SessionId>, StoreError>;

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

    /// Revokes a session; `true` when it was live until now.
    async fn revoke_session(
        &self,
        id: SessionId,
        now: UnixMillis,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Sessions neither revoked nor past their absolute end.
    async fn count_active_sessions(&self, now: UnixMillis) -> Result<u64, StoreError>;

    /// Deletes what can never be used again (ended sessions and their tokens, old codes);
    /// returns how many rows went.
    async fn sweep(&self, now: UnixMillis) -> Result<u64, StoreError>;
}
