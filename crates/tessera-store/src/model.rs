//! The rows the store keeps, as the rest of tessera sees them.

use std::time::Duration;

use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::redeem::{Decision, RedeemPolicy, SessionBounds};
use tessera_core::token::TokenHash;

/// A JWT signing key as stored: every replica signs with the same keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// JOSE algorithm name.
    pub alg: String,
    /// Private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// A browser single-sign-on session (the SSO cookie's target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsoSession {
    /// SHA-256 of the cookie handle.
    pub handle: TokenHash,
    /// Its id, linked from the sessions it starts.
    pub id: SsoId,
    /// The user.
    pub subject: Subject,
    /// When the user authenticated.
    pub auth_time: UnixMillis,
    /// When it ends.
    pub expires_at: UnixMillis,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

/// An authorization code (RFC 6749 §4.1.2), single use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCode {
    /// SHA-256 of the code.
    pub hash: TokenHash,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The exact `redirect_uri` of the authorization request.
    pub redirect_uri: String,
    /// The PKCE S256 challenge, if one was sent.
    pub code_challenge: Option<String>,
    /// The OpenID Connect `nonce`, echoed in the id_token.
    pub nonce: Option<String>,
    /// The granted scope.
    pub scope: String,
    /// The id the session started by this code will have (so a reused code can revoke it).
    pub session_id: SessionId,
    /// The SSO session the code came from.
    pub sso_id: Option<SsoId>,
    /// The user.
    pub subject: Subject,
    /// When the user authenticated.
    pub auth_time: UnixMillis,
    /// When the code expires.
    pub expires_at: UnixMillis,
}

/// What claiming a code found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeRedemption {
    /// This call claimed the code.
    Claimed(Box<AuthCode>),
    /// The code had been claimed before; the session it started should be revoked.
    AlreadyUsed {
        /// The session the first redemption started.
        session_id: SessionId,
    },
    /// No such code.
    Unknown,
}

/// What [`crate::Store::start_session`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStart {
    /// The session and its first refresh token are stored.
    Started,
    /// The code that names this session was presented again between its claim and now: nothing
    /// was stored, and the exchange must fail (RFC 6749 §4.1.2), or a reuse racing the first
    /// exchange would find no session to revoke and leave this one alive.
    CodeReused,
}

/// One login of one client: the family of its refresh tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Session id (the `sid` claim).
    pub id: SessionId,
    /// The user.
    pub subject: Subject,
    /// The client.
    pub client_id: ClientId,
    /// The SSO session it came from, if any.
    pub sso_id: Option<SsoId>,
    /// The granted scope.
    pub scope: String,
    /// When the user authenticated.
    pub auth_time: UnixMillis,
    /// When the session started.
    pub created_at: UnixMillis,
    /// Its absolute end.
    pub absolute_end: UnixMillis,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

impl Session {
    /// The facts a redemption depends on.
    pub fn bounds(&self) -> SessionBounds {
        SessionBounds {
            revoked_at: self.revoked_at,
            absolute_end: self.absolute_end,
        }
    }
}

/// A refresh token about to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRefreshToken {
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// When it was issued.
    pub issued_at: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
}

/// A refresh token's stored facts, for revocation and introspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshTokenInfo {
    /// The client it belongs to.
    pub client_id: ClientId,
    /// When it was issued.
    pub issued_at: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
    /// When it was first used.
    pub used_at: Option<UnixMillis>,
    /// Its session.
    pub session: Session,
}

/// A redemption of a refresh token.
#[derive(Clone, Debug)]
pub struct RedeemRequest {
    /// SHA-256 of the presented token.
    pub hash: TokenHash,
    /// SHA-256 of its derived successor, stored if this call rotates.
    pub successor: TokenHash,
    /// The authenticated client presenting it.
    pub client_id: ClientId,
    /// The request's source IP.
    pub ip: String,
    /// The time of the request.
    pub now: UnixMillis,
    /// The server's refresh policy.
    pub policy: RedeemPolicy,
    /// The sliding lifetime of the successor.
    pub ttl: Duration,
}

/// What a redemption decided and the session it concerned.
#[derive(Clone, Debug)]
pub struct Redemption {
    /// The decision, already applied to the store.
    pub decision: Decision,
    /// The session, as it was before the decision (none for an unknown token).
    pub session: Option<Session>,
    /// When the successor expires (meaningful for `Rotate` and `Grace`).
    pub successor_expires_at: UnixMillis,
}
