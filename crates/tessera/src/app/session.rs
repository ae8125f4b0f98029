//! Ending and inspecting sessions: revocation (RFC 7009), introspection (RFC 7662), userinfo
//! (OpenID Connect Core §5.3) and RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0).

use serde_json::{Value, json};
use tessera_core::audit::Event;
use tessera_core::clock::UnixMillis;
use tessera_core::id::{ClientId, SessionId, SsoId};
use tessera_core::jwt::Expect;
use tessera_core::token::{MAX_TOKEN_LEN, REFRESH_TOKEN_PREFIX, Secret};
use tessera_store::{RefreshTokenInfo, Session};

use super::token::user_claims;
use super::{App, AppError, RequestContext};
use crate::config::Client;
use crate::connector::Identity;

/// The claims tessera reads back from its own access tokens and id_tokens.
#[derive(Debug, serde::Deserialize)]
struct OwnClaims {
    sub: String,
    sid: String,
    aud: ClientId,
    exp: i64,
    iat: i64,
    #[serde(default)]
    scope: Option<String>,
}

/// What a valid `id_token_hint` tells logout.
#[derive(Debug)]
pub struct LogoutHint {
    /// The client the id_token was issued to.
    pub client_id: ClientId,
    /// The session it belongs to.
    pub session_id: SessionId,
}

impl App {
    /// RFC 7009: revoking a refresh token (or an access token) ends its whole session. Unknown
    /// tokens and tokens of other clients are ignored, as §2.2 asks.
    pub async fn revoke(
        &self,
        client: &Client,
        token: &str,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        self.revoke_because(client, token, ctx, "revocation_endpoint")
            .await
    }

    /// [`App::revoke`] for a caller of this process that knows why (the proxy's timeouts):
    /// `reason` goes into the `SessionRevoked` audit line.
    pub async fn revoke_because(
        &self,
        client: &Client,
        token: &str,
        ctx: &RequestContext,
        reason: &str,
    ) -> Result<(), AppError> {
        if token.len() > MAX_TOKEN_LEN {
            return Ok(());
        }
        let session = if token.starts_with(REFRESH_TOKEN_PREFIX) {
            let info = self
                .store
                .find_refresh_token(Secret::from_presented(token).hash())
                .await?;
            info.filter(|i| i.client_id == client.id).map(|i| i.session)
        } else {
            match self.verify_own(token, "at+jwt", false) {
                Some(claims) if claims.aud == client.id => {
                    self.store.find_session(SessionId::new(claims.sid)).await?
                }
                _ => None,
            }
        };
        if let Some(session) = session {
            self.end_session(&session, reason, ctx).await?;
        }
        Ok(())
    }

    /// RFC 7662 introspection for confidential clients.
    pub async fn introspect(&self, client: &Client, token: &str) -> Result<Value, AppError> {
        if client.public {
            return Err(AppError::InvalidClient);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Ok(inactive());
        }
        let now = self.now();
        if token.starts_with(REFRESH_TOKEN_PREFIX) {
            let hash = Secret::from_presented(token).hash();
            let info = self.store.find_refresh_token(hash).await?;
            return Ok(info.map_or_else(inactive, |info| {
                refresh_token_introspection(&info, &self.issuer, now)
            }));
        }
        let Some(claims) = self.verify_own(token, "at+jwt", false) else {
            return Ok(inactive());
        };
        let sid = SessionId::new(claims.sid.clone());
        let session = self.store.find_session(sid).await?;
        Ok(access_token_introspection(
            &claims,
            session.as_ref(),
            &self.issuer,
            now,
        ))
    }

    /// The user's claims for a valid access token of a live session.
    pub async fn userinfo(&self, access_token: &str) -> Result<Value, AppError> {
        let (session, identity) = self.person_of(access_token).await?;
        let mut info = user_claims(&identity, &session.scope);
        info.insert("sub".into(), json!(session.subject));
        Ok(Value::Object(info))
    }

    /// The live session a valid access token (signature, `exp` with no leeway, `typ: at+jwt`)
    /// belongs to, and what its person's tokens would say of them now; `InvalidToken` for
    /// anything else, a revoked session and a person gone from their connector included.
    pub(super) async fn person_of(
        &self,
        access_token: &str,
    ) -> Result<(Session, Identity), AppError> {
        let claims = self
            .verify_own(access_token, "at+jwt", false)
            .ok_or(AppError::InvalidToken)?;
        let session = self
            .store
            .find_session(SessionId::new(claims.sid))
            .await?
            .filter(|s| is_live(s, self.now()))
            .ok_or(AppError::InvalidToken)?;
        match self.identity_of(&session.subject).await {
            Ok(identity) => Ok((session, identity)),
            Err(AppError::InvalidGrant { .. }) => Err(AppError::InvalidToken),
            Err(e) => Err(e),
        }
    }

    /// Checks an `id_token_hint` (expired ones are fine: the user is logging out).
    pub fn logout_hint(&self, id_token: &str) -> Option<LogoutHint> {
        self.verify_own(id_token, "JWT", true).map(|c| LogoutHint {
            client_id: c.aud,
            session_id: SessionId::new(c.sid),
        })
    }

    /// Whether the session an `id_token_hint` names was started from SSO session `sso`.
    pub async fn hint_names_sso(&self, hint: &LogoutHint, sso: &SsoId) -> Result<bool, AppError> {
        let session = self.store.find_session(hint.session_id.clone()).await?;
        Ok(session.is_some_and(|s| s.sso_id.as_ref() == Some(sso)))
    }

    /// Whether `uri` is a registered post-logout redirect of `client_id`.
    pub fn post_logout_redirect_allowed(&self, client_id: &ClientId, uri: &str) -> bool {
        self.client(client_id.as_str())
            .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|r| r == uri))
    }

    /// Ends the hinted session (the app signing out) and the SSO session: this browser's, and
    /// the one the hinted session came from. The other sessions started through that SSO
    /// session live on: a browser signing out of one app does not sign its person's kubectl out
    /// (only "sign out everywhere", an admin or a disabled account end those).
    pub async fn logout(
        &self,
        sso_id: Option<SsoId>,
        hinted: Option<SessionId>,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        let now = self.now();
        let mut hinted_sso = None;
        let hinted_session = match hinted {
            Some(id) => self.store.find_session(id).await?,
            None => None,
        };
        if let Some(session) = hinted_session {
            hinted_sso.clone_from(&session.sso_id);
            self.end_session(&session, "logout", ctx).await?;
        }
        for sso in sso_id.into_iter().chain(hinted_sso) {
            self.store.end_sso(sso, now).await?;
        }
        Ok(())
    }

    async fn end_session(
        &self,
        session: &Session,
        reason: &str,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        if self
            .store
            .revoke_session(session.id.clone(), self.now(), reason)
            .await?
        {
            self.record(
                &Event::SessionRevoked {
                    reason: reason.into(),
                },
                &self.subjects(session, ctx, None),
            );
        }
        Ok(())
    }

    fn verify_own(&self, token: &str, typ: &str, allow_expired: bool) -> Option<OwnClaims> {
        let keys = self.keys();
        let expect = Expect {
            issuer: &self.issuer,
            audience: None,
            allow_expired,
            now_secs: self.now().as_secs(),
        };
        let header_typ = jsonwebtoken::decode_header(token).ok()?.typ;
        if header_typ.as_deref() != Some(typ) {
            return None;
        }
        keys.verifier.verify(token, &expect).ok()
    }
}

fn is_live(session: &Session, now: UnixMillis) -> bool {
    session.revoked_at.is_none() && now < session.absolute_end
}

/// RFC 7662 §2.2: all an inactive token is told.
fn inactive() -> Value {
    json!({"active": false})
}

/// The introspection of a refresh token found in the store: active while unused, unexpired
/// and of a live session.
fn refresh_token_introspection(info: &RefreshTokenInfo, issuer: &str, now: UnixMillis) -> Value {
    let live = info.used_at.is_none() && now < info.expires_at && is_live(&info.session, now);
    if !live {
        return inactive();
    }
    json!({
        "active": true,
        "token_type": "refresh_token",
        "client_id": info.client_id,
        "sub": info.session.subject,
        "scope": info.session.scope,
        "exp": info.expires_at.as_secs(),
        "iat": info.issued_at.as_secs(),
        "iss": issuer,
        "sid": info.session.id,
    })
}

/// The introspection of an access token whose signature and expiry verified: active while the
/// session it names is live (a revoked session ends its access tokens before they expire).
fn access_token_introspection(
    claims: &OwnClaims,
    session: Option<&Session>,
    issuer: &str,
    now: UnixMillis,
) -> Value {
    if !session.is_some_and(|s| is_live(s, now)) {
        return inactive();
    }
    json!({
        "active": true,
        "token_type": "Bearer",
        "client_id": claims.aud,
        "sub": claims.sub,
        "scope": claims.scope,
        "exp": claims.exp,
        "iat": claims.iat,
        "iss": issuer,
        "sid": claims.sid,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests;
