//! OpenID Connect Discovery 1.0: the provider's metadata document, read from
//! `ISSUER/.well-known/openid-configuration` and accepted only when it names that issuer.

use serde::Deserialize;

use crate::Error;
use crate::http::get_json;

/// The endpoints of an issuer (OpenID Connect Discovery 1.0 §3).
#[derive(Clone, Debug, Deserialize)]
pub struct ProviderMetadata {
    /// The issuer, as the document states it.
    pub issuer: String,
    /// Where the browser goes.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens are redeemed.
    pub token_endpoint: String,
    /// Where keys are published.
    pub jwks_uri: String,
    /// Where refresh tokens are revoked (RFC 7009).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// Where the browser goes to end its session at the provider (RP-Initiated Logout 1.0
    /// §2.1); providers without one cannot be signed out of by a client.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// Fetches the discovery document of `issuer` (given without a trailing `/`) and checks it
/// names `issuer` (Discovery §4.3).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<ProviderMetadata, Error> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    let metadata: ProviderMetadata = get_json(http, &url).await?;
    if metadata.issuer.trim_end_matches('/') != issuer {
        return Err(Error::IssuerMismatch {
            url,
            found: metadata.issuer,
            expected: issuer.to_owned(),
        });
    }
    Ok(metadata)
}
