//! The rows the store keeps, as the rest of tessera sees them.

use std::fmt;
use std::time::Duration;

use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::redeem::{Decision, RedeemPolicy, SessionBounds};
use tessera_core::token::TokenHash;

/// A JWT signing key as stored: every replica signs with the same keys. Its [`fmt::Debug`]
/// hides the private key.
#[derive(Clone, PartialEq, Eq)]
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

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("pkcs8", &format_args!("<{} bytes>", self.pkcs8.len()))
            .field("created_at", &self.created_at)
            .finish()
    }
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
    /// When it last answered an authorization request (the sign-in, or a silent answer).
    pub last_used_at: UnixMillis,
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
    /// The request's `User-Agent` (empty when it sent none): the account page's "last use".
    pub user_agent: String,
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

/// A row of `secrets`: a server-wide secret (the rotation key, the cookie key, …). Its
/// [`fmt::Debug`] hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// The secret's name.
    pub name: String,
    /// Its value.
    pub value: Vec<u8>,
}

impl fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

/// A row of `auth_codes`: the code and when it was claimed, if it was (so a copied code that
/// was used is still refused, and its reuse still revokes the session it started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCodeRow {
    /// The code.
    pub code: AuthCode,
    /// When it was claimed.
    pub used_at: Option<UnixMillis>,
}

/// A row of `sessions`: the session, why it was revoked, if it was, and where it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// The session.
    pub session: Session,
    /// Why it was revoked (`admin`, `replay`, `sign_out`, `code_reuse`, …).
    pub revoked_reason: Option<String>,
    /// Where it started (none for sessions stored before schema 5, and for the revoked
    /// placeholders of reused codes).
    pub started_from: Option<Origin>,
}

/// Where a request came from, as a person recognises it on the account page: its address and
/// its `User-Agent`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The source IP (the client's, as the listener resolved it behind trusted proxies).
    pub ip: String,
    /// The `User-Agent` header, empty when none was sent.
    pub user_agent: String,
}

/// One use of a session: when, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionUse {
    /// When.
    pub at: UnixMillis,
    /// From where (empty for uses recorded before schema 5).
    pub from: Origin,
}

/// A live session as listings show it (account page, `tessera sessions list`, the admin API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedSession {
    /// The session.
    pub session: Session,
    /// Its start: the code exchange.
    pub first_use: SessionUse,
    /// Its latest refresh, or its start when it was never refreshed.
    pub last_use: SessionUse,
    /// When it ends unless refreshed: its live refresh token's expiry, or its absolute end if
    /// that comes first.
    pub expires_at: UnixMillis,
}

/// Which live sessions a listing or a revocation concerns; every field narrows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only this person's.
    pub subject: Option<Subject>,
    /// Only this client's.
    pub client_id: Option<ClientId>,
}

/// One page of a listing, in session id order (stable as sessions come and go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPage {
    /// The sessions, at most the page's limit.
    pub sessions: Vec<ListedSession>,
    /// The id to list after for the next page, when there may be more.
    pub next_after: Option<SessionId>,
}

impl SessionPage {
    /// The page of `rows`, read with one row more than `limit`: that row's presence means a
    /// next page, which starts after the page's last session.
    pub(crate) fn cut(mut rows: Vec<ListedSession>, limit: u32) -> SessionPage {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        SessionPage {
            next_after: if more {
                rows.last().map(|s| s.session.id.clone())
            } else {
                None
            },
            sessions: rows,
        }
    }
}

/// What ending a person's sessions ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// The sessions revoked by this call (those live until now).
    pub sessions: Vec<Session>,
    /// How many of the person's SSO sessions ended.
    pub sso_sessions: u64,
}

/// A person an admin disabled (`tessera users disable`, the admin API): a row of
/// `disabled_users`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisabledUser {
    /// The person (`sub`).
    pub subject: Subject,
    /// When.
    pub disabled_at: UnixMillis,
    /// By whom: the admin's `sub` for the API, `cli` for the command line.
    pub disabled_by: String,
}

/// A row of `refresh_tokens`, every column: with its first use and successor, a copied token
/// used inside its grace period still answers the same successor, and a spent one is still
/// recognised as a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshTokenRow {
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// Its session (the family).
    pub session_id: SessionId,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// When it was issued.
    pub issued_at: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
    /// When it was first used.
    pub used_at: Option<UnixMillis>,
    /// The source IP of its first use.
    pub used_ip: Option<String>,
    /// The `User-Agent` of its first use.
    pub used_user_agent: Option<String>,
    /// SHA-256 of the successor its first use created.
    pub successor_hash: Option<TokenHash>,
}

/// A session of the authenticating proxy (DESIGN.md "Proxy"). The browser holds only an
/// opaque handle; the store keeps its SHA-256 and the session, whose tokens the proxy seals
/// before they get here (a refresh token is the one secret the proxy must be able to present
/// again, so it cannot be kept as a hash: it is kept encrypted instead).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxySession {
    /// SHA-256 of the cookie handle.
    pub handle: TokenHash,
    /// When the user logged in through the proxy.
    pub created_at: UnixMillis,
    /// The last request seen (the idle timeout counts from it; updated coarsely).
    pub last_seen_at: UnixMillis,
    /// When the session ends whatever happens (the absolute timeout).
    pub absolute_end: UnixMillis,
    /// When the tokens in `sealed` were obtained: the version a refresh claims against.
    pub refreshed_at: UnixMillis,
    /// A refresh in progress (by any replica) holds the session until then.
    pub refresh_lease_until: Option<UnixMillis>,
    /// The tokens and claims, sealed by the proxy (opaque to the store).
    pub sealed: Vec<u8>,
    /// The provider session its tokens belong to, when the provider shares this store (the
    /// proxy of `tessera serve`): ending that session deletes this one at once.
    pub session_id: Option<SessionId>,
}

impl fmt::Debug for ProxySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySession")
            .field("handle", &self.handle)
            .field("created_at", &self.created_at)
            .field("last_seen_at", &self.last_seen_at)
            .field("absolute_end", &self.absolute_end)
            .field("refreshed_at", &self.refreshed_at)
            .field("refresh_lease_until", &self.refresh_lease_until)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("session_id", &self.session_id)
            .finish()
    }
}

/// How a proxy session's refresh ended (see [`crate::Store::finish_proxy_refresh`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyRefreshOutcome {
    /// New tokens: stored, with the time they were obtained; the lease is released.
    Refreshed {
        /// The new sealed tokens and claims.
        sealed: Vec<u8>,
        /// When they were obtained.
        refreshed_at: UnixMillis,
    },
    /// The refresh failed for a passing reason: the lease is released so a later request retries.
    Abandoned,
}

/// What a directory connector (LDAP, upstream OpenID Connect) last said about a person: the
/// claims tokens carry, when the directory last confirmed them, and whether it has since said
/// the person is gone. Local users have none: their file is their directory. Its
/// [`fmt::Debug`] hides the sealed upstream token.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The person (`sub`), unique across connectors.
    pub subject: Subject,
    /// The connector they signed in through.
    pub connector_id: String,
    /// The claims the provider signs, as JSON (opaque to the store).
    pub claims: String,
    /// The last good check upstream (the login, or a re-validation).
    pub checked_at: UnixMillis,
    /// Until when one replica holds the right to re-validate, if one does.
    pub check_lease_until: Option<UnixMillis>,
    /// The upstream refresh token, sealed by the provider, if the connector keeps one.
    pub upstream: Option<Vec<u8>>,
    /// When the directory said the person is gone or disabled.
    pub disabled_at: Option<UnixMillis>,
}

impl fmt::Debug for IdentityRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityRecord")
            .field("subject", &self.subject)
            .field("connector_id", &self.connector_id)
            .field("claims", &self.claims)
            .field("checked_at", &self.checked_at)
            .field("check_lease_until", &self.check_lease_until)
            .field("upstream", &self.upstream.as_ref().map(|_| "<sealed>"))
            .field("disabled_at", &self.disabled_at)
            .finish()
    }
}

/// How a re-validation claimed with [`crate::Store::claim_revalidation`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevalidationOutcome {
    /// The directory confirmed the person: new claims (and upstream token, when it rotated)
    /// are stored with the time of the check; the lease is released.
    Confirmed {
        /// The claims as the directory now gives them.
        claims: String,
        /// When the directory answered.
        checked_at: UnixMillis,
        /// The rotated upstream refresh token, sealed; `None` keeps the stored one.
        upstream: Option<Vec<u8>>,
    },
    /// The directory said the person is gone or disabled, at this time.
    Disabled(UnixMillis),
    /// The directory could not be asked: only the lease is released, so a later refresh retries.
    Abandoned,
}

/// Every persisted row of a store, in a backend-neutral form: what
/// [`crate::Store::export_snapshot`] reads and [`crate::Store::import_snapshot`] writes, so
/// that [`crate::copy_store`] moves an installation from one backend to another.
///
/// A snapshot is held whole in memory: no streaming. That is a deliberate simplicity, fine for
/// the sizes an installation reaches (about 100 000 sessions with their refresh tokens take a
/// few hundred bytes a row, some tens or hundreds of megabytes in all); spent refresh tokens are
/// kept until their session's absolute end, so they are usually most of the rows.
///
/// Every list is in primary-key order, compared byte by byte (hashes by their bytes), so two
/// stores holding the same rows export equal snapshots whatever their backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `secrets`, by name.
    pub secrets: Vec<SecretRow>,
    /// `signing_keys`, by kid.
    pub signing_keys: Vec<StoredKey>,
    /// `sso_sessions`, by handle hash.
    pub sso_sessions: Vec<SsoSession>,
    /// `auth_codes`, by hash.
    pub auth_codes: Vec<AuthCodeRow>,
    /// `sessions`, by id (revoked ones and the revoked placeholders of reused codes included).
    pub sessions: Vec<SessionRow>,
    /// `refresh_tokens`, by hash; each names a session of [`Snapshot::sessions`].
    pub refresh_tokens: Vec<RefreshTokenRow>,
    /// `proxy_sessions`, by handle hash, refresh leases included (a copy made while a refresh
    /// is in flight keeps it held until the lease runs out, as the source would).
    pub proxy_sessions: Vec<ProxySession>,
    /// `identities`, by subject, leases included as for proxy sessions.
    pub identities: Vec<IdentityRecord>,
    /// `disabled_users`, by subject.
    pub disabled_users: Vec<DisabledUser>,
}

impl Snapshot {
    /// How many rows of each table it holds.
    pub fn counts(&self) -> CopyReport {
        CopyReport {
            secrets: self.secrets.len(),
            signing_keys: self.signing_keys.len(),
            sso_sessions: self.sso_sessions.len(),
            auth_codes: self.auth_codes.len(),
            sessions: self.sessions.len(),
            refresh_tokens: self.refresh_tokens.len(),
            proxy_sessions: self.proxy_sessions.len(),
            identities: self.identities.len(),
            disabled_users: self.disabled_users.len(),
        }
    }

    /// Whether it holds no row at all.
    pub fn is_empty(&self) -> bool {
        self.counts().total() == 0
    }
}

/// How many rows of each table a copy (or an import) wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows of `secrets`.
    pub secrets: usize,
    /// Rows of `signing_keys`.
    pub signing_keys: usize,
    /// Rows of `sso_sessions`.
    pub sso_sessions: usize,
    /// Rows of `auth_codes`.
    pub auth_codes: usize,
    /// Rows of `sessions`.
    pub sessions: usize,
    /// Rows of `refresh_tokens`.
    pub refresh_tokens: usize,
    /// Rows of `proxy_sessions`.
    pub proxy_sessions: usize,
    /// Rows of `identities`.
    pub identities: usize,
    /// Rows of `disabled_users`.
    pub disabled_users: usize,
}

impl CopyReport {
    /// All rows, every table together.
    pub fn total(&self) -> usize {
        self.secrets
            + self.signing_keys
            + self.sso_sessions
            + self.auth_codes
            + self.sessions
            + self.refresh_tokens
            + self.proxy_sessions
            + self.identities
            + self.disabled_users
    }
}

impl fmt::Display for CopyReport {
    /// One line: `5 sessions, 7 refresh tokens, 2 authorization codes, 1 SSO session, 2 signing
    /// keys, 2 secrets, 3 proxy sessions, 0 directory identities, 0 disabled users`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{}, {}, {}, {}, {}, {}, {}, {}, {}",
            plural(self.sessions, "session", "sessions"),
            plural(self.refresh_tokens, "refresh token", "refresh tokens"),
            plural(self.auth_codes, "authorization code", "authorization codes"),
            plural(self.sso_sessions, "SSO session", "SSO sessions"),
            plural(self.signing_keys, "signing key", "signing keys"),
            plural(self.secrets, "secret", "secrets"),
            plural(self.proxy_sessions, "proxy session", "proxy sessions"),
            plural(
                self.identities,
                "directory identity",
                "directory identities"
            ),
            plural(self.disabled_users, "disabled user", "disabled users"),
        )
    }
}
