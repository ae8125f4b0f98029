//! The renewal of one cached login, under its lock: a refresh of the id_token, or, when the
//! session has ended (`invalid_grant`) or there is none, a new browser login if someone is there
//! to sign in, else one sentence naming the command that signs in.
//!
//! A refresh token the provider refused is removed from the cache at once: presenting a spent
//! token again would look like a replay and could revoke the session of every tool.

use anyhow::{Result, bail};
use tessera_oidc::{self as oidc, IdClaims, RelyingParty, TokenEndpoint, Tokens};

use crate::browser;
use crate::cache::{Entry, TokenCache, entry_from};
use crate::credential::CredentialArgs;

/// One login's renewal, with the cache lock held by the caller.
pub(crate) struct Renewal<'a> {
    /// Which login.
    pub(crate) args: &'a CredentialArgs,
    /// Its cache file.
    pub(crate) cache: &'a TokenCache,
    /// The HTTPS client for the issuer.
    pub(crate) http: reqwest::Client,
    /// Whether someone can answer a browser login.
    pub(crate) interactive: bool,
}

impl Renewal<'_> {
    /// The renewed entry, already written to the cache.
    pub(crate) async fn run(self, cached: Option<Entry>) -> Result<Entry> {
        if let Some((entry, refresh_token)) = self.refreshable(cached)?
            && let Some(renewed) = self.refresh(entry, refresh_token).await?
        {
            return Ok(renewed);
        }
        self.sign_in().await
    }

    /// The cached entry and its refresh token; `None` when only a new login can help, and an
    /// error when that needs someone who is not there.
    fn refreshable(&self, cached: Option<Entry>) -> Result<Option<(Entry, String)>> {
        let (issuer, hint) = (self.args.issuer(), self.args.login_hint());
        match cached {
            Some(entry) => match entry.refresh_token.clone() {
                Some(token) => return Ok(Some((entry, token))),
                None if !self.interactive => {
                    bail!("the session with {issuer} has ended; run `{hint}` to sign in again")
                }
                None => {}
            },
            None if !self.interactive => {
                bail!("no cached login for {issuer}; run `{hint}` first")
            }
            None => {}
        }
        Ok(None)
    }

    /// Redeems the refresh token; `None` when the session has ended and a new login follows.
    async fn refresh(&self, entry: Entry, refresh_token: String) -> Result<Option<Entry>> {
        let endpoint = TokenEndpoint {
            http: &self.http,
            url: &entry.token_endpoint,
            client: &self.args.client(),
        };
        match endpoint.refresh(&refresh_token).await {
            Ok(tokens) => {
                // Straight from the token endpoint over TLS; the API server verifies it.
                let claims: IdClaims = oidc::read_unverified_claims(&tokens.id_token)?;
                let next = updated(entry, tokens, &claims, refresh_token);
                self.cache.write(&next)?;
                Ok(Some(next))
            }
            Err(oidc::Error::InvalidGrant { description }) => {
                self.session_ended(entry, &description)?;
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e)
                .context("cannot refresh the token; the cached session is kept, try again")),
        }
    }

    /// The provider refused the refresh token (spent, or its session ended): it is never
    /// presented again; a new login follows if someone can sign in.
    fn session_ended(&self, mut entry: Entry, why: &str) -> Result<()> {
        entry.refresh_token = None;
        self.cache.write(&entry)?;
        if !self.interactive {
            bail!(
                "the session with {} has ended ({why}); run `{}` to sign in again",
                self.args.issuer(),
                self.args.login_hint()
            );
        }
        eprintln!("The session has ended ({why}); signing in again.");
        Ok(())
    }

    /// A new browser login for the same kubeconfig entry, written to the cache.
    async fn sign_in(self) -> Result<Entry> {
        let provider = oidc::discover(&self.http, self.args.issuer()).await?;
        let rp = RelyingParty::discovered(self.http, provider, self.args.client());
        let connector = self.args.connector.as_deref();
        let logged_in = browser::browser_login(&rp, connector, browser::has_display()).await?;
        self.args.check_user(&logged_in.claims)?;
        let entry = entry_from(
            self.cache.key(),
            rp.metadata().await?,
            logged_in.tokens,
            &logged_in.claims,
        );
        self.cache.write(&entry)?;
        Ok(entry)
    }
}

/// The entry after a refresh; a provider that does not rotate keeps the old refresh token.
fn updated(entry: Entry, tokens: Tokens, claims: &IdClaims, previous_refresh: String) -> Entry {
    Entry {
        id_token: tokens.id_token,
        issued_at: claims.iat,
        expires_at: claims.exp,
        refresh_token: Some(tokens.refresh_token.unwrap_or(previous_refresh)),
        ..entry
    }
}
