//! The proxy as a relying party: the provider it logs users in with. Either this tessera's own
//! provider, called in-process (`tessera serve` with a `proxy:` section), or any OpenID Connect
//! provider over HTTPS (`proxy.provider`). Both answer the same [`Grant`], so the rest of the
//! proxy does not know which one it talks to.
//!
//! Every id_token an external provider sends is verified before it is used: after a login and
//! after each refresh (signature against the provider's JWKS, issuer, audience, expiry, and the
//! nonce or the session's subject). A refresh that brings an id_token that does not verify ends
//! the session.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_core::id::SessionId;
use tessera_oidc::{self as oidc, RelyingParty};

pub use super::identity::Identity;
use super::identity::UserHeaders;
use crate::app::{App, AppError, RequestContext};
use crate::config::Client;
use crate::config::proxy::ExternalProvider;

/// Id of the client `tessera serve` registers for its own proxy. It has a random secret nobody
/// knows, so only the proxy, in-process, can use it.
pub const LOCAL_CLIENT_ID: &str = "tessera-proxy";

/// Scopes the proxy asks for.
const SCOPE: &str = "openid profile email groups offline_access";

/// How a login may be answered at the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignIn {
    /// The provider's single sign-on session may answer without asking (a first visit).
    #[default]
    SingleSignOn,
    /// The person types credentials again, whatever the provider's single sign-on session
    /// (after the proxy's session timed out or was signed out of): `prompt=login` and
    /// `max_age=0` (OpenID Connect Core §3.1.2.1; a provider may honour either).
    Credentials,
}

/// Where the proxy logs users in.
pub enum Provider {
    /// This tessera's own provider, in-process.
    Local {
        /// The provider.
        app: Arc<App>,
    },
    /// An OpenID Connect provider over HTTPS.
    Remote(Box<Remote>),
}

/// An external provider: the proxy as one relying party of it.
pub struct Remote {
    issuer: String,
    rp: RelyingParty,
}

/// Tokens from a login or a refresh, and who they are for. Only the tokens are serialized (the
/// identity is read back from the id_token), so a session cookie carries the groups once.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "GrantTokens", into = "GrantTokens")]
pub struct Grant {
    /// The id_token (sent upstream as the bearer token).
    pub id_token: String,
    /// The refresh token, when the provider issued one.
    pub refresh_token: Option<String>,
    /// The user, from the id_token.
    pub identity: Identity,
    /// The user as headers for the upstream.
    pub(crate) headers: UserHeaders,
    /// The session of this process's own provider the tokens belong to (none for an external
    /// provider, and for a grant read back from storage): stored beside a server-side proxy
    /// session so that ending the provider session ends it at once.
    pub(crate) local_session: Option<SessionId>,
}

/// The tokens (and the headers carrying the id_token) are left out: a `{:?}` in a log or an
/// error must not hand out a session.
impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("id_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The serialized form of a [`Grant`].
#[derive(Serialize, Deserialize)]
struct GrantTokens {
    id_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

impl TryFrom<GrantTokens> for Grant {
    type Error = ProviderError;

    fn try_from(tokens: GrantTokens) -> Result<Grant, ProviderError> {
        grant(tokens.id_token, tokens.refresh_token)
    }
}

impl From<Grant> for GrantTokens {
    fn from(grant: Grant) -> GrantTokens {
        GrantTokens {
            id_token: grant.id_token,
            refresh_token: grant.refresh_token,
        }
    }
}

/// A failure of the provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The grant is dead (the session ended, the token was spent): log in again.
    #[error("the provider refused the grant")]
    Refused,
    /// The provider cannot be reached or answered nonsense; the grant may still be good.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
}

impl Provider {
    /// An external provider; its discovery document is read on first use (and again after a
    /// failure), so the proxy starts even while the provider is down.
    pub fn remote(config: ExternalProvider) -> anyhow::Result<Provider> {
        let http = oidc::http_client(config.certificate_authority.as_deref())?;
        // `client_secret_post` for a confidential client, else the public client's id alone.
        let authentication = match config.client_secret {
            Some(secret) => oidc::ClientAuthentication::SecretPost(oidc::ClientSecret::new(secret)),
            None => oidc::ClientAuthentication::None,
        };
        let client = oidc::Client {
            id: config.client_id,
            authentication,
        };
        Ok(Provider::Remote(Box::new(Remote {
            rp: RelyingParty::new(http, config.issuer.clone(), client),
            issuer: config.issuer,
        })))
    }

    /// The URL that starts a login at the provider (authorization code flow with PKCE S256).
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
        sign_in: SignIn,
    ) -> Result<String, ProviderError> {
        let (endpoint, client_id) = self.authorization_endpoint().await?;
        let request = oidc::AuthorizationRequest {
            client_id,
            redirect_uri,
            scope: SCOPE,
            state,
            nonce,
            code_challenge: challenge,
        };
        let mut url = match request.url(&endpoint) {
            Ok(url) => url,
            Err(oidc::Error::NotAUrl { reason, .. }) => {
                return Err(ProviderError::Unavailable(format!(
                    "authorization endpoint: {reason}"
                )));
            }
            Err(e) => return Err(unavailable(&e)),
        };
        if sign_in == SignIn::Credentials {
            url.query_pairs_mut()
                .append_pair("prompt", "login")
                .append_pair("max_age", "0");
        }
        Ok(url.into())
    }

    /// The URL that ends the browser's single sign-on session at the provider (RP-Initiated
    /// Logout 1.0 §2), or `None` when the provider publishes no `end_session_endpoint`.
    pub async fn end_session_url(
        &self,
        id_token: &str,
        post_logout_redirect_uri: &str,
        state: &str,
    ) -> Result<Option<String>, ProviderError> {
        let (endpoint, client_id) = match self {
            Provider::Local { app } => (format!("{}/logout", app.issuer), LOCAL_CLIENT_ID),
            Provider::Remote(r) => {
                let metadata = r.rp.metadata().await.map_err(|e| unavailable(&e))?;
                let Some(endpoint) = metadata.end_session_endpoint.clone() else {
                    return Ok(None);
                };
                (endpoint, r.rp.client().id.as_str())
            }
        };
        let request = oidc::LogoutRequest {
            id_token_hint: id_token,
            client_id,
            post_logout_redirect_uri,
            state,
        };
        match request.url(&endpoint) {
            Ok(url) => Ok(Some(url.into())),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Where the browser goes to log in, and as which client.
    async fn authorization_endpoint(&self) -> Result<(String, &str), ProviderError> {
        match self {
            Provider::Local { app } => Ok((format!("{}/authorize", app.issuer), LOCAL_CLIENT_ID)),
            Provider::Remote(r) => {
                let metadata = r.rp.metadata().await.map_err(|e| unavailable(&e))?;
                Ok((
                    metadata.authorization_endpoint.clone(),
                    r.rp.client().id.as_str(),
                ))
            }
        }
    }

    /// Redeems an authorization code; the id_token's nonce must be `nonce`.
    pub async fn exchange(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
        ctx: &RequestContext,
    ) -> Result<Grant, ProviderError> {
        match self {
            Provider::Local { app } => {
                let client = local_client(app)?;
                let response = app
                    .exchange_code(client, code, Some(redirect_uri), Some(verifier), ctx)
                    .await
                    .map_err(app_error)?;
                let mut grant = grant(response.id_token, Some(response.refresh_token))?;
                grant.local_session = grant.identity.sid.clone().map(SessionId::new);
                Ok(grant)
            }
            Provider::Remote(r) => r.exchange(code, redirect_uri, verifier, nonce).await,
        }
    }

    /// Redeems a refresh token of `subject`'s session for new tokens. New tokens for anyone
    /// else, or an id_token that does not verify, end the session ([`ProviderError::Refused`]).
    pub async fn refresh(
        &self,
        refresh_token: &str,
        subject: &str,
        ctx: &RequestContext,
    ) -> Result<Grant, ProviderError> {
        let grant = match self {
            Provider::Local { app } => {
                let client = local_client(app)?;
                let response = app
                    .refresh(client, refresh_token, None, ctx)
                    .await
                    .map_err(app_error)?;
                grant(response.id_token, Some(response.refresh_token))?
            }
            Provider::Remote(r) => r.refresh(refresh_token, subject).await?,
        };
        if grant.identity.sub != subject {
            tracing::warn!(
                found = %grant.identity.sub,
                "a refresh brought tokens of another subject; the session ends"
            );
            return Err(ProviderError::Refused);
        }
        Ok(grant)
    }

    /// Revokes a refresh token, which ends its session at the provider (RFC 7009). `reason`
    /// is what this process's own provider audits; an external one hears only RFC 7009.
    pub async fn revoke(
        &self,
        refresh_token: &str,
        ctx: &RequestContext,
        reason: &'static str,
    ) -> Result<(), ProviderError> {
        match self {
            Provider::Local { app } => {
                let client = local_client(app)?;
                app.revoke_because(client, refresh_token, ctx, reason)
                    .await
                    .map_err(app_error)
            }
            Provider::Remote(r) => r.revoke(refresh_token).await,
        }
    }
}

impl Remote {
    async fn exchange(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Grant, ProviderError> {
        let tokens = self
            .rp
            .exchange_code(code, redirect_uri, verifier)
            .await
            .map_err(token_error)?;
        self.rp
            .verify_id_token(&tokens.id_token, oidc::Expected::Nonce(nonce))
            .await
            .map_err(|e| unavailable(&e))?;
        grant(tokens.id_token, tokens.refresh_token)
    }

    async fn refresh(&self, refresh_token: &str, subject: &str) -> Result<Grant, ProviderError> {
        let tokens = self.rp.refresh(refresh_token).await.map_err(token_error)?;
        match self
            .rp
            .verify_id_token(&tokens.id_token, oidc::Expected::Subject(subject))
            .await
        {
            Ok(_) => grant(tokens.id_token, tokens.refresh_token),
            // The discovery document or the keys could not be fetched: nothing is known yet.
            Err(e) if !e.is_refusal() => Err(unavailable(&e)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    issuer = %self.issuer,
                    "the provider's refreshed id_token does not verify; the session ends"
                );
                Err(ProviderError::Refused)
            }
        }
    }

    async fn revoke(&self, refresh_token: &str) -> Result<(), ProviderError> {
        self.rp
            .revoke(refresh_token)
            .await
            .map_err(|e| unavailable(&e))
    }
}

/// A failed token request: `invalid_grant` ends the session, anything else may pass.
fn token_error(e: oidc::Error) -> ProviderError {
    match e {
        oidc::Error::InvalidGrant { .. } => ProviderError::Refused,
        other => unavailable(&other),
    }
}

fn unavailable(e: &oidc::Error) -> ProviderError {
    ProviderError::Unavailable(e.to_string())
}

/// The local provider's client for the proxy (registered by `tessera serve`).
fn local_client(app: &App) -> Result<&Client, ProviderError> {
    app.client(LOCAL_CLIENT_ID).ok_or_else(|| {
        ProviderError::Unavailable(format!("the client `{LOCAL_CLIENT_ID}` is not registered"))
    })
}

fn app_error(e: AppError) -> ProviderError {
    match e {
        AppError::InvalidGrant { .. } | AppError::InvalidToken => ProviderError::Refused,
        other => ProviderError::Unavailable(other.to_string()),
    }
}

fn grant(id_token: String, refresh_token: Option<String>) -> Result<Grant, ProviderError> {
    // An external provider's id_token has been verified (`Remote::verify`); the local
    // provider's comes from this process; a stored one was sealed by this proxy.
    let identity: Identity =
        oidc::read_unverified_claims(&id_token).map_err(|e| unavailable(&e))?;
    Ok(Grant {
        headers: UserHeaders::new(&identity, &id_token),
        id_token,
        refresh_token,
        identity,
        local_session: None,
    })
}

/// The client `tessera serve` registers for its own proxy: confidential, with a secret nobody
/// holds, and exactly the given redirect and post-logout redirect URIs.
pub fn local_client_registration(
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
) -> Client {
    let secret: [u8; 32] = rand::random();
    Client {
        id: tessera_core::id::ClientId::new(LOCAL_CLIENT_ID),
        public: false,
        secret_hash: Some(crate::secret::sha256_secret_hash(&hex::encode(secret))),
        redirect_uris,
        post_logout_redirect_uris,
        max_idle: None,
    }
}
