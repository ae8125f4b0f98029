//! The authorization endpoint's use cases: validating the request (RFC 6749 §4.1.1, OpenID
//! Connect Core §3.1.2), the login with rate limiting, the SSO session, and issuing codes. The
//! request's validation is pure and lives in [`request`].

mod request;

use std::sync::Arc;
use std::time::Duration;

use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId, Subject};
use tessera_core::token::{MAX_TOKEN_LEN, Secret};
use tessera_store::{AuthCode, IdentityRecord, SsoSession, StoreError};
use url::Url;

use super::limiter::LimitKey;
use super::{App, AppError, RequestContext, random_id, random_secret, slow_check};
use crate::config::Client;
use crate::connector::{Connector, DirectoryError, Kind, Person};
use crate::users::User;

/// Lifetime of an authorization code: RFC 6749 §4.1.2 recommends at most ten minutes; a code
/// is exchanged within a second by every real client.
const CODE_TTL: Duration = Duration::from_secs(60);

/// Longest user name accepted at the login form, in bytes. Longer ones are refused before they
/// are counted, hashed or logged.
pub const MAX_USERNAME_LEN: usize = 256;

/// A validated authorization request.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    /// The client.
    pub client_id: ClientId,
    /// The redirect URI, exactly as sent.
    pub redirect_uri: String,
    /// The granted scope (known scopes only, space-separated).
    pub scope: String,
    /// The client's `state`, echoed back.
    pub state: Option<String>,
    /// The OpenID Connect `nonce`.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// `prompt=login` forces the form even with an SSO session.
    pub force_login: bool,
    /// `prompt=none` forbids the form.
    pub no_prompt: bool,
    /// `connector_id`: sign in through this connector, without the choice.
    pub connector_id: Option<String>,
    /// `max_age`: an SSO session older than this many seconds does not answer silently.
    pub max_age: Option<u64>,
}

/// Why an authorization request fails, and how to tell the user.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or redirect URI cannot be trusted: show a page, never redirect (RFC 6749
    /// §4.1.2.1).
    Page(String),
    /// Tell the client through its redirect URI.
    Redirect(String),
}

/// Why a login failed.
#[derive(Debug)]
pub enum LoginFailure {
    /// Wrong user name or password.
    BadCredentials,
    /// The user name is longer than [`MAX_USERNAME_LEN`] or has control characters.
    InvalidUsername,
    /// Too many failures for this user or IP; retry after this many seconds.
    RateLimited(u64),
    /// The form names no connector, or one that is not configured, and there is a choice.
    NoConnector,
    /// The connector's directory could not be asked; its name, for the sentence.
    DirectoryUnavailable(String),
    /// The password was right, but an admin has disabled the person.
    Disabled,
    /// The store failed.
    Unavailable(AppError),
}

/// A successful login: the SSO session and its cookie handle.
pub struct LoginOutcome {
    /// The SSO session.
    pub sso: SsoSession,
    /// The secret the SSO cookie carries.
    pub handle: Secret,
}

impl App {
    /// Validates an authorization request. `param` returns a parameter's single value.
    pub fn validate_authorization(
        &self,
        param: impl Fn(&str) -> Option<String>,
    ) -> Result<AuthRequest, AuthorizeError> {
        let (client, redirect_uri) = request::trusted_redirect(&param, |id| self.client(id))?;
        let state = param("state");
        let refused = |refusal: request::Refusal| {
            AuthorizeError::Redirect(self.error_redirect(
                &redirect_uri,
                refusal.error,
                refusal.description,
                state.as_deref(),
            ))
        };
        let request =
            request::check(&param, client, &redirect_uri, state.as_deref()).map_err(&refused)?;
        if let Some(id) = &request.connector_id
            && self.connectors.find(id).is_none()
        {
            return Err(refused(request::Refusal {
                error: "invalid_request",
                description: "connector_id names no configured connector",
            }));
        }
        Ok(request)
    }

    /// The redirect URI with an error (RFC 6749 §4.1.2.1) and the issuer (RFC 9207).
    pub fn error_redirect(
        &self,
        redirect_uri: &str,
        error: &str,
        description: &str,
        state: Option<&str>,
    ) -> String {
        self.redirect_with(
            redirect_uri,
            &[("error", error), ("error_description", description)],
            state,
        )
    }

    fn redirect_with(
        &self,
        redirect_uri: &str,
        pairs: &[(&str, &str)],
        state: Option<&str>,
    ) -> String {
        let Ok(mut url) = Url::parse(redirect_uri) else {
            return redirect_uri.to_owned();
        };
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in pairs {
                query.append_pair(k, v);
            }
            if let Some(state) = state {
                query.append_pair("state", state);
            }
            query.append_pair("iss", &self.issuer);
        }
        url.to_string()
    }

    /// The live SSO session that a cookie handle names, if any.
    pub async fn sso_session(&self, handle: Option<&str>) -> Result<Option<SsoSession>, AppError> {
        let Some(handle) = handle.filter(|h| h.len() <= MAX_TOKEN_LEN) else {
            return Ok(None);
        };
        let now = self.now();
        let sso = self
            .store
            .find_sso(Secret::from_presented(handle).hash())
            .await?;
        Ok(sso.filter(|s| s.revoked_at.is_none() && now < s.expires_at))
    }

    /// Whether `sso` may answer `request` without the form: not when `prompt=login` asks for
    /// one, nor when the sign-in is older than `max_age` seconds (OpenID Connect Core
    /// §3.1.2.1; `max_age=0` is a fresh sign-in every time), nor when the SSO session went
    /// unused longer than the client's `max_idle` or `session.sso_idle_timeout`.
    pub fn answers_silently(&self, sso: &SsoSession, request: &AuthRequest) -> bool {
        let now = self.now();
        let within = |since: UnixMillis, limit: Duration| {
            u64::try_from(now.millis_since(since)).unwrap_or(0)
                <= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
        };
        let recent =
            |max_age: u64| max_age > 0 && within(sso.auth_time, Duration::from_secs(max_age));
        let idle_limit = self
            .client(request.client_id.as_str())
            .and_then(|c| c.max_idle)
            .unwrap_or(self.config.sso_idle_timeout);
        !request.force_login
            && request.max_age.is_none_or(recent)
            && within(sso.last_used_at, idle_limit)
    }

    /// Restarts `sso`'s idle clock: it just answered an authorization request.
    pub async fn touch_sso(&self, sso: &SsoSession) -> Result<(), AppError> {
        Ok(self.store.touch_sso(sso.handle, self.now()).await?)
    }

    /// Checks a person's password with the connector `connector_id` (the only one when there
    /// is no choice), rate-limited per user and per IP: the attempt takes a slot before the
    /// check (see `limiter`), so racing guesses cannot exceed the limit.
    pub async fn login(
        &self,
        connector_id: Option<&str>,
        username: &str,
        password: &str,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, LoginFailure> {
        check_username(username)?;
        let connector = self.connector_for(connector_id)?;
        let now = self.now();
        let who = Subjects {
            uid: Some(username.to_owned()),
            connector_id: Some(connector.id.clone()),
            ..ctx.subjects()
        };
        // A directory's people are counted apart from local users of the same name.
        let counted = match connector.kind {
            Kind::Local => username.to_owned(),
            Kind::Ldap(_) | Kind::Oidc(_) => format!("{}:{username}", connector.id),
        };
        let keys = vec![LimitKey::user(&counted), LimitKey::address(&ctx.ip)];
        let failed = |reason: &str| Event::LoginFailed {
            reason: reason.into(),
        };
        let attempt = self
            .admit_audited(&self.login_limiter, keys, &failed("rate_limited"), &who)
            .await
            .map_err(LoginFailure::RateLimited)?;
        let authenticated = match &connector.kind {
            Kind::Local => self
                .user_with_password(username, password)
                .await
                .map(|user| Subject::new(user.username))
                .ok_or(DirectoryError::BadCredentials),
            Kind::Ldap(ldap) => {
                let person = ldap.login(username, password, self.connectors.mapping());
                match person.await {
                    Ok(person) => {
                        let remembered = self.remember(&connector.id, &person, now, None).await;
                        remembered.map_err(|e| LoginFailure::Unavailable(e.into()))?;
                        Ok(person.subject)
                    }
                    Err(e) => Err(e),
                }
            }
            // Its people sign in at the upstream, through the login page's button.
            Kind::Oidc(_) => return Err(LoginFailure::NoConnector),
        };
        let subject = match authenticated {
            Ok(subject) => subject,
            Err(DirectoryError::Unavailable(why)) => {
                // Neither a success nor a guess: the attempt is not counted.
                drop(attempt);
                tracing::warn!(connector = %connector.id, reason = %why, "a login could not reach the directory");
                self.record(&failed("directory_unavailable"), &who);
                return Err(LoginFailure::DirectoryUnavailable(connector.name.clone()));
            }
            Err(refusal) => {
                attempt.failed();
                let reason = match refusal {
                    DirectoryError::Disabled => "account_disabled",
                    _ => "bad_credentials",
                };
                self.record(&failed(reason), &who);
                return Err(LoginFailure::BadCredentials);
            }
        };
        attempt.succeeded();
        if self
            .is_disabled(&subject)
            .await
            .map_err(LoginFailure::Unavailable)?
        {
            self.record(&failed("user_disabled"), &who);
            return Err(LoginFailure::Disabled);
        }
        self.start_session_of(subject, now, who)
            .await
            .map_err(|e| LoginFailure::Unavailable(e.into()))
    }

    /// The end of every successful login, whatever the connector: the SSO session, and the
    /// audit line naming who signed in.
    pub(super) async fn start_session_of(
        &self,
        subject: Subject,
        now: UnixMillis,
        who: Subjects,
    ) -> Result<LoginOutcome, StoreError> {
        let outcome = self.start_sso(subject.clone(), now).await?;
        let who = Subjects {
            uid: Some(subject.to_string()),
            ..who
        };
        self.record(&Event::LoginSucceeded, &who);
        Ok(outcome)
    }

    /// The connector a login goes through: the one named, or the only one.
    fn connector_for(&self, id: Option<&str>) -> Result<Arc<Connector>, LoginFailure> {
        let all = self.connectors.all();
        let found = match id {
            Some(id) => self.connectors.find(id),
            None if all.len() == 1 => all.first(),
            None => None,
        };
        found.cloned().ok_or(LoginFailure::NoConnector)
    }

    /// Stores what the directory said of `person` at login: the claims their tokens carry until
    /// the next re-validation, and the upstream refresh token (sealed) that re-validation
    /// redeems, if the connector has one. A new login clears a disabled mark: the directory
    /// just vouched.
    pub(super) async fn remember(
        &self,
        connector_id: &str,
        person: &Person,
        now: UnixMillis,
        upstream: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let claims = person.identity.to_json();
        self.store
            .save_identity(IdentityRecord {
                subject: person.subject.clone(),
                connector_id: connector_id.to_owned(),
                claims,
                checked_at: now,
                check_lease_until: None,
                upstream,
                disabled_at: None,
            })
            .await
    }

    /// Starts the SSO session of a login at `now`, and the handle its cookie carries.
    async fn start_sso(
        &self,
        subject: Subject,
        now: UnixMillis,
    ) -> Result<LoginOutcome, StoreError> {
        let handle = random_secret("tss1_");
        let id = SsoId::new(random_id());
        let sso = new_sso(&handle, id, subject, now, self.config.session_max_lifetime);
        self.store.create_sso(sso.clone()).await?;
        Ok(LoginOutcome { sso, handle })
    }

    /// The user `username` if `password` is theirs. An unknown user costs the same time as a
    /// wrong password, so timing does not reveal which users exist.
    async fn user_with_password(&self, username: &str, password: &str) -> Option<User> {
        let Some(user) = self.users().find(username).cloned() else {
            self.password_matches(&self.dummy_password_hash, password)
                .await;
            return None;
        };
        let ok = self.password_matches(&user.password_hash, password).await;
        ok.then_some(user)
    }

    async fn password_matches(&self, hash: &str, password: &str) -> bool {
        let (hash, password) = (hash.to_owned(), password.to_owned());
        slow_check(&self.password_gate, move || {
            crate::secret::verify_password(&hash, &password)
        })
        .await
    }

    /// Issues a code for a validated request and an authenticated user; returns where to send
    /// the browser.
    pub async fn issue_code(
        &self,
        request: &AuthRequest,
        sso: &SsoSession,
    ) -> Result<String, AppError> {
        let now = self.now();
        let code = random_secret("tsc1_");
        self.store
            .insert_code(AuthCode {
                hash: code.hash(),
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                code_challenge: request.code_challenge.clone(),
                nonce: request.nonce.clone(),
                scope: request.scope.clone(),
                session_id: SessionId::new(random_id()),
                sso_id: Some(sso.id.clone()),
                subject: sso.subject.clone(),
                auth_time: sso.auth_time,
                expires_at: now.plus(CODE_TTL),
            })
            .await?;
        Ok(self.redirect_with(
            &request.redirect_uri,
            &[("code", code.expose())],
            request.state.as_deref(),
        ))
    }
}

/// Checked before anything is counted, hashed or logged: a name is never written whole unless
/// it is short and printable.
fn check_username(username: &str) -> Result<(), LoginFailure> {
    if username.len() > MAX_USERNAME_LEN || username.chars().any(char::is_control) {
        return Err(LoginFailure::InvalidUsername);
    }
    Ok(())
}

/// A new SSO session `id` for `user`, who authenticated at `now`; its cookie carries `handle`.
fn new_sso(
    handle: &Secret,
    id: SsoId,
    subject: Subject,
    now: UnixMillis,
    lifetime: Duration,
) -> SsoSession {
    SsoSession {
        handle: handle.hash(),
        id,
        subject,
        auth_time: now,
        last_used_at: now,
        expires_at: now.plus(lifetime),
        revoked_at: None,
    }
}

/// Exact match, except that a public client's loopback redirect may use any port
/// (RFC 8252 §7.3): native apps such as `tessera login` listen on a random port.
pub(crate) fn redirect_allowed(client: &Client, uri: &str) -> bool {
    if client.redirect_uris.iter().any(|r| r == uri) {
        return true;
    }
    if !client.public {
        return false;
    }
    let Ok(given) = Url::parse(uri) else {
        return false;
    };
    let loopback = matches!(given.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if given.scheme() != "http"
        || !loopback
        || !given.username().is_empty()
        || given.password().is_some()
        || given.fragment().is_some()
    {
        return false;
    }
    client
        .redirect_uris
        .iter()
        .filter_map(|r| Url::parse(r).ok())
        .any(|registered| {
            registered.scheme() == "http"
                && registered.host_str() == given.host_str()
                && registered.path() == given.path()
                && registered.query() == given.query()
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
