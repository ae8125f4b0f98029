//! A relying party of one provider, as a long-lived value: the provider's metadata, discovered
//! on first use (and again after a failure, so a caller starts while its provider is down), and
//! the provider's signing keys, fetched on first use and again when a token names a key not
//! among them (a rotation). The proxy's external provider and an upstream connector hold one;
//! the kubectl plugin makes one per login.

use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::jwk::JwkSet;
use tokio::sync::OnceCell;

use crate::Error;
use crate::discovery::{ProviderMetadata, discover};
use crate::http::get_json;
use crate::id_token::{Expected, IdClaims, Verification};
use crate::token::{Client, Renewed, RevocationEndpoint, TokenEndpoint, Tokens};

/// One client at one OpenID Connect provider.
#[derive(Debug)]
pub struct RelyingParty {
    http: reqwest::Client,
    issuer: String,
    client: Client,
    metadata: OnceCell<ProviderMetadata>,
    keys: Mutex<Option<Arc<JwkSet>>>,
}

impl RelyingParty {
    /// A relying party of `issuer` (without a trailing `/`), discovering it on first use.
    pub fn new(http: reqwest::Client, issuer: impl Into<String>, client: Client) -> RelyingParty {
        RelyingParty {
            http,
            issuer: issuer.into(),
            client,
            metadata: OnceCell::new(),
            keys: Mutex::new(None),
        }
    }

    /// A relying party of a provider already discovered.
    pub fn discovered(
        http: reqwest::Client,
        metadata: ProviderMetadata,
        client: Client,
    ) -> RelyingParty {
        RelyingParty {
            http,
            issuer: metadata.issuer.trim_end_matches('/').to_owned(),
            client,
            metadata: OnceCell::new_with(Some(metadata)),
            keys: Mutex::new(None),
        }
    }

    /// The HTTPS client it talks to the provider with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The client it is.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The provider's metadata, discovered now if it is not yet.
    pub async fn metadata(&self) -> Result<&ProviderMetadata, Error> {
        self.metadata
            .get_or_try_init(|| discover(&self.http, &self.issuer))
            .await
    }

    /// Redeems an authorization code with its PKCE verifier. Verify the id_token next.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Tokens, Error> {
        let metadata = self.metadata().await?;
        self.token_endpoint(metadata)
            .exchange_code(code, redirect_uri, verifier)
            .await
    }

    /// Redeems a refresh token. Verify the id_token next, against the session's subject.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, Error> {
        let metadata = self.metadata().await?;
        self.token_endpoint(metadata).refresh(refresh_token).await
    }

    /// Redeems a refresh token, accepting an answer without an id_token (OpenID Connect Core
    /// §12.2); verify the id_token, when there is one, against the session's subject.
    pub async fn renew(&self, refresh_token: &str) -> Result<Renewed, Error> {
        let metadata = self.metadata().await?;
        self.token_endpoint(metadata).renew(refresh_token).await
    }

    /// Revokes a refresh token; a provider without a revocation endpoint has nothing to call,
    /// and the token lives on there until it expires.
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), Error> {
        let metadata = self.metadata().await?;
        let Some(url) = &metadata.revocation_endpoint else {
            return Ok(());
        };
        RevocationEndpoint {
            http: &self.http,
            url,
            client: &self.client,
        }
        .revoke(refresh_token)
        .await
    }

    /// Verifies an id_token with the provider's keys, fetching them again once when the token
    /// names a key the cached set lacks.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        expected: Expected<'_>,
    ) -> Result<IdClaims, Error> {
        let metadata = self.metadata().await?;
        let verification = Verification {
            issuer: &metadata.issuer,
            client_id: &self.client.id,
            expected,
        };
        if let Some(keys) = self.cached_keys() {
            match verification.verify(&keys, id_token) {
                Err(Error::UnknownKey { .. }) => {}
                verified => return verified,
            }
        }
        let keys: Arc<JwkSet> = Arc::new(get_json(&self.http, &metadata.jwks_uri).await?);
        *self.keys.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&keys));
        verification.verify(&keys, id_token)
    }

    fn token_endpoint<'a>(&'a self, metadata: &'a ProviderMetadata) -> TokenEndpoint<'a> {
        TokenEndpoint {
            http: &self.http,
            url: &metadata.token_endpoint,
            client: &self.client,
        }
    }

    fn cached_keys(&self) -> Option<Arc<JwkSet>> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
