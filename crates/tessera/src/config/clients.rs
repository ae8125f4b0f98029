//! The `clients:` section: the registered OAuth clients.

use std::collections::HashMap;

use serde::Deserialize;
use tessera_core::id::ClientId;

use super::Invalid;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    /// Client id.
    id: String,
    /// A public client has no secret and must use PKCE.
    #[serde(default)]
    public: bool,
    /// `sha256:<hex>` of the secret, or an argon2id PHC string.
    #[serde(default)]
    secret_hash: Option<String>,
    /// Exact redirect URIs; loopback ones of public clients match any port.
    #[serde(default)]
    redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser afterwards.
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    /// This client's own SSO idle timeout, instead of `session.sso_idle_timeout`.
    #[serde(default)]
    max_idle: Option<String>,
}

/// A registered client.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its id.
    pub id: ClientId,
    /// Public (no secret, PKCE required) or confidential.
    pub public: bool,
    /// The secret's hash for confidential clients.
    pub secret_hash: Option<String>,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Its SSO idle timeout, if it has its own.
    pub max_idle: Option<std::time::Duration>,
}

/// The clients by id; errors name the client's index (`clients[i]`).
pub(super) fn validate(raw: Vec<RawClient>) -> Result<HashMap<String, Client>, Invalid> {
    let mut clients = HashMap::new();
    for (i, c) in raw.into_iter().enumerate() {
        let key = format!("clients[{i}]");
        let client = client(c).map_err(|(under, m)| (format!("{key}{under}"), m))?;
        let id = client.id.as_str().to_owned();
        if clients.insert(id.clone(), client).is_some() {
            return Err((key, format!("client id `{id}` appears twice")));
        }
    }
    Ok(clients)
}

/// One client; an error's key is the part under `clients[i]` (empty for the client itself).
fn client(c: RawClient) -> Result<Client, Invalid> {
    let bad = |message: String| (String::new(), message);
    if c.id.is_empty() {
        return Err(bad("`id` is required".into()));
    }
    if !c.public && c.secret_hash.is_none() {
        return Err(bad(format!(
            "confidential client `{}` needs `secret_hash` (or set `public: true`)",
            c.id
        )));
    }
    if c.public && c.secret_hash.is_some() {
        return Err(bad(format!(
            "public client `{}` must not have a `secret_hash`",
            c.id
        )));
    }
    if let Some(hash) = &c.secret_hash {
        crate::secret::check_hash_format(hash).map_err(|m| (".secret_hash".to_owned(), m))?;
    }
    for uri in c.redirect_uris.iter().chain(&c.post_logout_redirect_uris) {
        check_redirect_uri(uri).map_err(bad)?;
    }
    let max_idle = c
        .max_idle
        .as_deref()
        .map(|text| super::duration(".max_idle", text))
        .transpose()?;
    Ok(Client {
        max_idle,
        id: ClientId::new(c.id),
        public: c.public,
        secret_hash: c.secret_hash,
        redirect_uris: c.redirect_uris,
        post_logout_redirect_uris: c.post_logout_redirect_uris,
    })
}

/// A redirect URI is an absolute URL without a fragment (RFC 6749 §3.1.2).
fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let url = url::Url::parse(uri).map_err(|e| format!("`{uri}`: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!(
            "`{uri}` must not have a fragment (RFC 6749 §3.1.2)"
        ));
    }
    Ok(())
}
