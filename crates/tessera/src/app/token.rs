//! The token endpoint's use cases: client authentication, the code exchange and the refresh
//! (DESIGN.md "Redeeming a refresh token"), and minting of id_tokens and access tokens.

use serde::Serialize;
use serde_json::{Map, Value, json};
use tessera_core::audit::{Event, Subjects};
use tessera_core::clock::UnixMillis;
use tessera_core::pkce;
use tessera_core::redeem::{Decision, RejectReason};
use tessera_core::token::{MAX_TOKEN_LEN, REFRESH_TOKEN_PREFIX, Secret, TokenHash};
use tessera_store::{CodeRedemption, NewRefreshToken, RedeemRequest, Session, SessionStart};

use super::limiter::LimitKey;
use super::{App, AppError, RequestContext, random_secret, slow_check};
use crate::config::Client;
use crate::metrics::RefreshOutcome;
use crate::secret;
use crate::users::User;

/// How the client presented its credentials.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// The client id.
    pub id: String,
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

impl App {
    /// Authenticates a client (RFC 6749 §2.3): `client_secret_basic`, `client_secret_post`,
    /// or `none` for public clients. Runs before anything is consumed.
    pub async fn authenticate_client(
        &self,
        credentials: &ClientCredentials,
        ctx: &RequestContext,
    ) -> Result<&Client, AppError> {
        let client = self
            .client(&credentials.id)
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
    /// itself once it has authenticated; anything else takes a slot of the limiter per client
    /// and per address before it is hashed.
    async fn check_client_secret(
        &self,
        client: &Client,
        hash: &str,
        presented: &str,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        let verified = Secret::from_presented(format!("{hash}\n{presented}")).hash();
        if self.secret_was_verified(&verified) {
            return Ok(());
        }
        let who = Subjects {
            client_id: Some(client.id.to_string()),
            source_ip: Some(ctx.ip.clone()),
            user_agent: ctx.user_agent.clone(),
            ..Subjects::default()
        };
        let keys = vec![
            LimitKey::client(client.id.as_str()),
            LimitKey::address(&ctx.ip),
        ];
        let attempt = match self.admit(&self.client_limiter, keys).await {
            Ok(attempt) => attempt,
            Err(refusal) => {
                if refusal.first {
                    let reason = "rate_limited".into();
                    self.record(&Event::ClientAuthenticationFailed { reason }, &who);
                }
                return Err(AppError::ClientRateLimited {
                    retry_after: refusal.retry_after,
                });
            }
        };
        if !self.secret_matches(hash, presented).await {
            attempt.failed();
            let reason = "bad_secret".into();
            self.record(&Event::ClientAuthenticationFailed { reason }, &who);
            return Err(AppError::InvalidClient);
        }
        attempt.succeeded();
        self.verified_secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(verified);
        Ok(())
    }

    fn secret_was_verified(&self, verified: &TokenHash) -> bool {
        self.verified_secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(verified)
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
        if code.len() > MAX_TOKEN_LEN {
            return Err(AppError::InvalidGrant {
                reason: "oversized code",
            });
        }
        let code = match self
            .store
            .redeem_code(Secret::from_presented(code).hash(), now)
            .await?
        {
            CodeRedemption::Unknown => {
                return Err(AppError::InvalidGrant {
                    reason: "unknown code",
                });
            }
            CodeRedemption::AlreadyUsed { session_id } => {
                // The session is revoked now, or was revoked in advance by the store when the
                // first exchange had not started it yet: either way the reuse is audited.
                self.store
                    .revoke_session(session_id.clone(), now, "code_reuse")
                    .await?;
                self.record(
                    &Event::SessionRevoked {
                        reason: "code_reuse".into(),
                    },
                    &Subjects {
                        session_id: Some(session_id.to_string()),
                        client_id: Some(client.id.to_string()),
                        source_ip: Some(ctx.ip.clone()),
                        user_agent: ctx.user_agent.clone(),
                        ..Subjects::default()
                    },
                );
                return Err(AppError::InvalidGrant {
                    reason: "code reused",
                });
            }
            CodeRedemption::Claimed(code) => code,
        };
        if now >= code.expires_at {
            return Err(AppError::InvalidGrant {
                reason: "code expired",
            });
        }
        if code.client_id != client.id {
            return Err(AppError::InvalidGrant {
                reason: "code of another client",
            });
        }
        if redirect_uri != Some(code.redirect_uri.as_str()) {
            return Err(AppError::InvalidGrant {
                reason: "redirect_uri differs from the authorization request",
            });
        }
        let pkce_ok = match (&code.code_challenge, code_verifier) {
            (Some(challenge), Some(verifier)) => pkce::verify_s256(verifier, challenge),
            (None, None) => true,
            _ => false,
        };
        if !pkce_ok {
            return Err(AppError::InvalidGrant {
                reason: "PKCE verification failed",
            });
        }
        let user = self.user(code.subject.as_str())?;
        let session = Session {
            id: code.session_id.clone(),
            subject: code.subject.clone(),
            client_id: client.id.clone(),
            sso_id: code.sso_id.clone(),
            scope: code.scope.clone(),
            auth_time: code.auth_time,
            created_at: now,
            absolute_end: code.auth_time.plus(self.config.session_max_lifetime),
            revoked_at: None,
        };
        let refresh = random_secret(REFRESH_TOKEN_PREFIX);
        let first = NewRefreshToken {
            hash: refresh.hash(),
            issued_at: now,
            expires_at: tessera_core::redeem::successor_expiry(
                now,
                self.config.refresh_ttl,
                session.bounds(),
            ),
        };
        if self.store.start_session(session.clone(), first).await? == SessionStart::CodeReused {
            return Err(AppError::InvalidGrant {
                reason: "code reused",
            });
        }
        let response = self.mint(
            &session,
            &session.scope,
            user,
            code.nonce.as_deref(),
            &refresh,
            now,
        )?;
        self.record(
            &Event::TokenIssued {
                grant_type: "authorization_code".into(),
            },
            &subjects(&session, ctx, Some(code.hash)),
        );
        Ok(response)
    }

    /// The `refresh_token` grant: one atomic redemption in the store, then the answer.
    pub async fn refresh(
        &self,
        client: &Client,
        token: &str,
        scope: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<TokenResponse, AppError> {
        if token.len() > MAX_TOKEN_LEN {
            self.metrics.observe_refresh(RefreshOutcome::Rejected);
            return Err(AppError::InvalidGrant {
                reason: "oversized refresh token",
            });
        }
        let now = self.now();
        let presented = Secret::from_presented(token);
        // RFC 6749 §6: the scope may be narrowed, never widened. Checked before the redemption,
        // so a bad scope never consumes the token.
        let granted = match scope {
            Some(_) => self.store.find_refresh_token(presented.hash()).await?,
            None => None,
        };
        let narrowed = match (scope, granted) {
            (Some(scope), Some(info)) => Some(narrow_scope(scope, &info.session.scope)?),
            _ => None,
        };
        let successor = presented.successor(&self.rotation_key);
        let redemption = self
            .store
            .redeem_refresh_token(RedeemRequest {
                hash: presented.hash(),
                successor: successor.hash(),
                client_id: client.id.clone(),
                ip: ctx.ip.clone(),
                now,
                policy: self.config.policy,
                ttl: self.config.refresh_ttl,
            })
            .await?;
        let token_hash = Some(presented.hash());
        let Some(session) = redemption.session else {
            self.metrics.observe_refresh(RefreshOutcome::Rejected);
            return Err(AppError::InvalidGrant {
                reason: "unknown refresh token",
            });
        };
        let who = subjects(&session, ctx, token_hash);
        match redemption.decision {
            Decision::Rotate => {
                self.metrics.observe_refresh(RefreshOutcome::Rotated);
                let response =
                    self.answer_refresh(&session, narrowed.as_deref(), &successor, now)?;
                self.record(&Event::TokenRefreshed, &who);
                Ok(response)
            }
            Decision::Grace {
                first_used_ip,
                first_used_ms_ago,
            } => {
                self.metrics.observe_refresh(RefreshOutcome::GraceReuse);
                let response =
                    self.answer_refresh(&session, narrowed.as_deref(), &successor, now)?;
                self.record(
                    &Event::ExpiredRefreshTokenUsed {
                        first_used_ip,
                        first_used_ms_ago,
                    },
                    &who,
                );
                Ok(response)
            }
            Decision::Replay {
                revoke_session,
                first_used_ip,
                first_used_ms_ago,
            } => {
                self.metrics.observe_refresh(RefreshOutcome::Replay);
                self.record(
                    &Event::RefreshTokenReplayDetected {
                        first_used_ip,
                        first_used_ms_ago,
                        session_revoked: revoke_session,
                    },
                    &who,
                );
                if revoke_session {
                    self.record(
                        &Event::SessionRevoked {
                            reason: "replay".into(),
                        },
                        &who,
                    );
                }
                Err(AppError::InvalidGrant {
                    reason: "refresh token replayed",
                })
            }
            Decision::Reject(reason) => {
                self.metrics.observe_refresh(RefreshOutcome::Rejected);
                if reason == RejectReason::SessionEnded {
                    self.record(&Event::SessionExpired, &who);
                }
                Err(AppError::InvalidGrant {
                    reason: reason.as_str(),
                })
            }
        }
    }

    fn answer_refresh(
        &self,
        session: &Session,
        narrowed_scope: Option<&str>,
        successor: &Secret,
        now: UnixMillis,
    ) -> Result<TokenResponse, AppError> {
        let user = self.user(session.subject.as_str())?;
        let scope = narrowed_scope.unwrap_or(&session.scope);
        self.mint(session, scope, user, None, successor, now)
    }

    fn user(&self, username: &str) -> Result<&User, AppError> {
        self.users.find(username).ok_or(AppError::InvalidGrant {
            reason: "the user no longer exists",
        })
    }

    /// Signs an id_token and an access token for `session` with `scope` (the session's, or a
    /// narrower one asked for at refresh) and wraps them with `refresh`.
    fn mint(
        &self,
        session: &Session,
        scope: &str,
        user: &User,
        nonce: Option<&str>,
        refresh: &Secret,
        now: UnixMillis,
    ) -> Result<TokenResponse, AppError> {
        let keys = self.keys();
        let iat = now.as_secs();
        let id_exp = now.plus(self.config.id_token_ttl).as_secs();
        let mut id = user_claims(user, scope);
        id.insert("iss".into(), json!(self.issuer));
        id.insert("sub".into(), json!(session.subject));
        id.insert("aud".into(), json!(session.client_id));
        id.insert("azp".into(), json!(session.client_id));
        id.insert("exp".into(), json!(id_exp));
        id.insert("iat".into(), json!(iat));
        id.insert("auth_time".into(), json!(session.auth_time.as_secs()));
        id.insert("sid".into(), json!(session.id));
        if let Some(nonce) = nonce {
            id.insert("nonce".into(), json!(nonce));
        }
        let id_token = keys.id_signer.sign("JWT", &id)?;
        let jti: [u8; 16] = rand::random();
        let access = json!({
            "iss": self.issuer,
            "sub": session.subject,
            "aud": session.client_id,
            "client_id": session.client_id,
            "exp": now.plus(self.config.access_token_ttl).as_secs(),
            "iat": iat,
            "auth_time": session.auth_time.as_secs(),
            "jti": hex::encode(jti),
            "sid": session.id,
            "scope": scope,
        });
        // RFC 9068 §2.1: access tokens carry `typ: at+jwt` so an id_token is never taken for one.
        let access_token = keys.access_signer.sign("at+jwt", &access)?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.config.access_token_ttl.as_secs(),
            refresh_token: refresh.expose().to_owned(),
            id_token,
            scope: scope.to_owned(),
        })
    }
}

/// The user's claims that the granted scope releases (OpenID Connect Core §5.4).
pub(crate) fn user_claims(user: &User, scope: &str) -> Map<String, Value> {
    let mut claims = Map::new();
    let has = |s: &str| scope.split(' ').any(|g| g == s);
    if has("profile") {
        claims.insert("preferred_username".into(), json!(user.username));
        claims.insert("name".into(), json!(user.username));
    }
    if let Some(email) = user.email.as_ref().filter(|_| has("email")) {
        claims.insert("email".into(), json!(email));
        // Local users' addresses are set by the administrator.
        claims.insert("email_verified".into(), json!(true));
    }
    if has("groups") {
        claims.insert("groups".into(), json!(user.groups));
    }
    claims
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

pub(super) fn subjects(
    session: &Session,
    ctx: &RequestContext,
    token: Option<TokenHash>,
) -> Subjects {
    Subjects {
        uid: Some(session.subject.to_string()),
        session_id: Some(session.id.to_string()),
        client_id: Some(session.client_id.to_string()),
        source_ip: Some(ctx.ip.clone()),
        user_agent: ctx.user_agent.clone(),
        token_id: token.map(|t| t.token_id()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
