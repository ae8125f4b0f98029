//! The token endpoint's use cases: client authentication, the code exchange and the refresh
//! (DESIGN.md "Redeeming a refresh token"), and minting of id_tokens and access tokens. The
//! decisions are pure and live below: [`code`] checks a claimed code, [`redemption`] turns the
//! store's decision into an answer, [`claim`] builds the claims that are signed.

mod claim;
mod code;
mod redemption;

use std::collections::HashSet;
use std::sync::Mutex;

use serde::Serialize;
use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId};
use tessera_core::token::{MAX_TOKEN_LEN, REFRESH_TOKEN_PREFIX, Secret, TokenHash};
use tessera_store::{AuthCode, CodeRedemption, RedeemRequest, Session, SessionStart};

pub(crate) use claim::user_claims;

use super::limiter::LimitKey;
use super::{App, AppError, RequestContext, random_secret, slow_check};
use crate::config::Client;
use crate::connector::Identity;
use crate::metrics::RefreshOutcome;
use crate::secret;
use claim::Issuance;
use code::Presentation;
use redemption::Verdict;

/// How the client presented its credentials.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// The client id.
    pub id: ClientId,
    /// The secret, if any was sent (an empty Basic password counts as none).
    pub secret: Option<String>,
}

/// A successful token response (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The access token (JWT, RFC 9068).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
    /// The next refresh token.
    pub refresh_token: String,
    /// The id_token.
    pub id_token: String,
    /// The granted scope.
    pub scope: String,
}

/// Client secrets already verified in this process, so a confidential client pays the argon2
/// cost once per process, not once per refresh, and is not held up by the failure limit that
/// others' wrong secrets put on its client id. Kept as SHA-256 of the stored hash and the
/// presented secret: a changed registration never matches an old entry.
#[derive(Debug, Default)]
pub(super) struct VerifiedSecrets(Mutex<HashSet<TokenHash>>);

impl VerifiedSecrets {
    /// The entry of `presented` checked against `hash`.
    fn entry(hash: &str, presented: &str) -> TokenHash {
        Secret::from_presented(format!("{hash}\n{presented}")).hash()
    }

    fn contains(&self, entry: &TokenHash) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(entry)
    }

    fn insert(&self, entry: TokenHash) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(entry);
    }
}

impl App {
    /// Authenticates a client (RFC 6749 §2.3): `client_secret_basic`, `client_secret_post`,
    /// or `none` for public clients. Runs before anything is consumed.
    pub async fn authenticate_client(
        &self,
        credentials: &ClientCredentials,
        ctx: &RequestContext,
    ) -> Result<&Client, AppError> {
        let client = self
            .client(credentials.id.as_str())
            .ok_or(AppError::InvalidClient)?;
        match (&client.secret_hash, credentials.secret.as_deref()) {
            (None, None) => Ok(client),
            (Some(hash), Some(presented)) => {
                self.check_client_secret(client, hash, presented, ctx)
                    .await?;
                Ok(client)
            }
            _ => Err(AppError::InvalidClient),
        }
    }

    /// Checks a presented secret. A secret verified before is accepted at once, even while the
    /// client is rate-limited, so an attacker sending wrong secrets cannot lock out the client
    /// itself once it has authenticated.
    async fn check_client_secret(
        &self,
        client: &Client,
        hash: &str,
        presented: &str,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        let entry = VerifiedSecrets::entry(hash, presented);
        if self.verified_secrets.contains(&entry) {
            return Ok(());
        }
        self.verify_client_secret(client, hash, presented, ctx)
            .await?;
        self.verified_secrets.insert(entry);
        Ok(())
    }

    /// Verifies a secret not verified before: the attempt takes a slot of the limiter per
    /// client and per address before it is hashed, and a wrong one is audited.
    async fn verify_client_secret(
        &self,
        client: &Client,
        hash: &str,
        presented: &str,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        let who = Subjects {
            client_id: Some(client.id.to_string()),
            ..ctx.subjects()
        };
        let keys = vec![
            LimitKey::client(client.id.as_str()),
            LimitKey::address(&ctx.ip),
        ];
        let failed = |reason: &str| Event::ClientAuthenticationFailed {
            reason: reason.into(),
        };
        let attempt = self
            .admit_audited(&self.client_limiter, keys, &failed("rate_limited"), &who)
            .await
            .map_err(|retry_after| AppError::ClientRateLimited { retry_after })?;
        if !self.secret_matches(hash, presented).await {
            attempt.failed();
            self.record(&failed("bad_secret"), &who);
            return Err(AppError::InvalidClient);
        }
        attempt.succeeded();
        Ok(())
    }

    async fn secret_matches(&self, hash: &str, presented: &str) -> bool {
        if !secret::is_slow_hash(hash) {
            return secret::verify_client_secret(hash, presented);
        }
        let (hash, presented) = (hash.to_owned(), presented.to_owned());
        slow_check(&self.client_secret_gate, move || {
            secret::verify_client_secret(&hash, &presented)
        })
        .await
    }

    /// The `authorization_code` grant (RFC 6749 §4.1.3), with PKCE (RFC 7636 §4.6). A second use
    /// of a code revokes the session its first use started (RFC 6749 §4.1.2).
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<TokenResponse, AppError> {
        let now = self.now();
        let code = self.claim_code(client, code, ctx, now).await?;
        let presented = Presentation {
            client_id: &client.id,
            redirect_uri,
            code_verifier,
        };
        code::check_redemption(&code, presented, now)?;
        let identity = self.identity_of(&code.subject).await?;
        // A person disabled between their sign-in and this exchange gets no session.
        if self.is_disabled(&code.subject).await? {
            return Err(AppError::InvalidGrant {
                reason: "the user is disabled",
            });
        }
        let (session, refresh) = self.start_session(&code, now, ctx).await?;
        let issuance = Issuance {
            issuer: &self.issuer,
            session: &session,
            scope: &session.scope,
            now,
        };
        let response = self.mint(issuance, &identity, code.nonce.as_deref(), &refresh)?;
        let grant_type = "authorization_code".into();
        let who = self.subjects(&session, ctx, Some(code.hash));
        self.record(&Event::TokenIssued { grant_type }, &who);
        Ok(response)
    }

    /// Starts the session a checked code names, with its first refresh token. A reuse of the
    /// code racing this exchange stops it (see [`SessionStart::CodeReused`]).
    async fn start_session(
        &self,
        code: &AuthCode,
        now: UnixMillis,
        ctx: &RequestContext,
    ) -> Result<(Session, Secret), AppError> {
        let session = code::session_from(code, now, self.config.session_max_lifetime);
        let refresh = random_secret(REFRESH_TOKEN_PREFIX);
        let first = code::first_refresh_token(&refresh, &session, now, self.config.refresh_ttl);
        let started = self
            .store
            .start_session(session.clone(), first, ctx.origin())
            .await?;
        if started == SessionStart::CodeReused {
            return Err(AppError::InvalidGrant {
                reason: "code reused",
            });
        }
        Ok((session, refresh))
    }

    /// Claims a presented code in the store, which makes it spent whatever follows. A code
    /// claimed before is a reuse: the session its first use started is revoked.
    async fn claim_code(
        &self,
        client: &Client,
        code: &str,
        ctx: &RequestContext,
        now: UnixMillis,
    ) -> Result<AuthCode, AppError> {
        if code.len() > MAX_TOKEN_LEN {
            return Err(AppError::InvalidGrant {
                reason: "oversized code",
            });
        }
        let hash = Secret::from_presented(code).hash();
        match self.store.redeem_code(hash, now).await? {
            CodeRedemption::Claimed(code) => Ok(*code),
            CodeRedemption::Unknown => Err(AppError::InvalidGrant {
                reason: "unknown code",
            }),
            CodeRedemption::AlreadyUsed { session_id } => {
                self.revoke_for_code_reuse(session_id, client, ctx, now)
                    .await?;
                Err(AppError::InvalidGrant {
                    reason: "code reused",
                })
            }
        }
    }

    /// The session is revoked now, or was revoked in advance by the store when the first
    /// exchange had not started it yet: either way the reuse is audited.
    async fn revoke_for_code_reuse(
        &self,
        session_id: SessionId,
        client: &Client,
        ctx: &RequestContext,
        now: UnixMillis,
    ) -> Result<(), AppError> {
        self.store
            .revoke_session(session_id.clone(), now, "code_reuse")
            .await?;
        let who = Subjects {
            session_id: Some(session_id.to_string()),
            client_id: Some(client.id.to_string()),
            ..ctx.subjects()
        };
        let reason = "code_reuse".into();
        self.record(&Event::SessionRevoked { reason }, &who);
        Ok(())
    }

    /// The `refresh_token` grant: one atomic redemption in the store, then the answer its
    /// decision calls for (a `Verdict`, see `token::redemption`).
    pub async fn refresh(
        &self,
        client: &Client,
        token: &str,
        scope: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<TokenResponse, AppError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(self.refresh_rejected("oversized refresh token"));
        }
        let now = self.now();
        let presented = Secret::from_presented(token);
        let narrowed = self.narrowed_scope(scope, &presented).await?;
        let successor = presented.successor(&self.rotation_key);
        let request = self.redeem_request(&presented, &successor, client, ctx, now);
        let redemption = self.store.redeem_refresh_token(request).await?;
        let Some(session) = redemption.session else {
            return Err(self.refresh_rejected("unknown refresh token"));
        };
        let who = self.subjects(&session, ctx, Some(presented.hash()));
        let issuance = Issuance {
            issuer: &self.issuer,
            session: &session,
            scope: narrowed.as_deref().unwrap_or(&session.scope),
            now,
        };
        let verdict = Verdict::of(redemption.decision);
        self.carry_out(&verdict, issuance, &successor, &who).await
    }

    /// The redemption of `presented` asked of the store, under the server's policy.
    fn redeem_request(
        &self,
        presented: &Secret,
        successor: &Secret,
        client: &Client,
        ctx: &RequestContext,
        now: UnixMillis,
    ) -> RedeemRequest {
        RedeemRequest {
            hash: presented.hash(),
            successor: successor.hash(),
            client_id: client.id.clone(),
            ip: ctx.ip.clone(),
            user_agent: ctx.user_agent.clone().unwrap_or_default(),
            now,
            policy: self.config.policy,
            ttl: self.config.refresh_ttl,
        }
    }

    /// Counts a refresh refused before the store decided anything.
    fn refresh_rejected(&self, reason: &'static str) -> AppError {
        self.metrics.observe_refresh(RefreshOutcome::Rejected);
        AppError::InvalidGrant { reason }
    }

    /// Answers what `verdict` calls for: its events and `invalid_grant`, or tokens with the
    /// `successor` and then its events (none for an answer that could not be signed, nor for
    /// a person their directory no longer vouches for).
    async fn carry_out(
        &self,
        verdict: &Verdict,
        issuance: Issuance<'_>,
        successor: &Secret,
        who: &Subjects,
    ) -> Result<TokenResponse, AppError> {
        self.metrics.observe_refresh(verdict.outcome);
        if let Some(reason) = verdict.refusal {
            verdict.events.iter().for_each(|e| self.record(e, who));
            return Err(AppError::InvalidGrant { reason });
        }
        let identity = self
            .refreshed_identity(issuance.session, who, issuance.now)
            .await?;
        let response = self.mint(issuance, &identity, None, successor)?;
        verdict.events.iter().for_each(|e| self.record(e, who));
        Ok(response)
    }

    /// RFC 6749 §6: the scope may be narrowed, never widened. Checked before the redemption,
    /// so a bad scope never consumes the token; an unknown token narrows nothing and is
    /// refused by the redemption.
    async fn narrowed_scope(
        &self,
        scope: Option<&str>,
        presented: &Secret,
    ) -> Result<Option<String>, AppError> {
        let Some(scope) = scope else {
            return Ok(None);
        };
        let granted = self.store.find_refresh_token(presented.hash()).await?;
        granted
            .map(|info| narrow_scope(scope, &info.session.scope))
            .transpose()
    }

    /// Signs an id_token and an access token for `issuance` and wraps them with `refresh`.
    fn mint(
        &self,
        issuance: Issuance<'_>,
        identity: &Identity,
        nonce: Option<&str>,
        refresh: &Secret,
    ) -> Result<TokenResponse, AppError> {
        let keys = self.keys();
        let id = issuance.id_token(identity, nonce, self.config.id_token_ttl);
        let id_token = keys.id_signer.sign("JWT", &id)?;
        let jti: [u8; 16] = rand::random();
        let access = issuance.access_token(self.config.access_token_ttl, &hex::encode(jti));
        // RFC 9068 §2.1: access tokens carry `typ: at+jwt` so an id_token is never taken for one.
        let access_token = keys.access_signer.sign("at+jwt", &access)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.config.access_token_ttl.as_secs(),
            refresh_token: refresh.expose().to_owned(),
            id_token,
            scope: issuance.scope.to_owned(),
        })
    }
}

/// RFC 6749 §6: a refresh may ask for the granted scope or less, never more. Returns the
/// granted scopes that were asked for, in the granted order.
fn narrow_scope(requested: &str, granted: &str) -> Result<String, AppError> {
    let asked = || requested.split(' ').filter(|s| !s.is_empty());
    if let Some(extra) = asked().find(|s| !granted.split(' ').any(|g| g == *s)) {
        return Err(AppError::InvalidScope(format!(
            "scope `{extra}` was not granted to this session"
        )));
    }
    Ok(granted
        .split(' ')
        .filter(|g| asked().any(|s| s == *g))
        .collect::<Vec<_>>()
        .join(" "))
}

impl App {
    /// Who and where an event about `session` concerns.
    pub(super) fn subjects(
        &self,
        session: &Session,
        ctx: &RequestContext,
        token: Option<TokenHash>,
    ) -> Subjects {
        Subjects {
            uid: Some(session.subject.to_string()),
            connector_id: self.connector_id_of(&session.subject),
            session_id: Some(session.id.to_string()),
            client_id: Some(session.client_id.to_string()),
            token_id: token.map(|t| t.token_id()),
            ..ctx.subjects()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
