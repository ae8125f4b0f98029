//! The OpenID Connect relying party that tessera's wings share: the kubectl plugin, the proxy's
//! external provider and upstream connectors all log people in at a provider the same way.
//!
//! - [`http_client`]: HTTPS with a given CA bundle or the system's roots, no redirects.
//! - [`discover`]: the provider's metadata ([`ProviderMetadata`], OpenID Connect Discovery).
//! - [`AuthorizationRequest`]: the browser's way to the provider, with PKCE S256.
//! - [`LogoutRequest`]: the browser's way to the provider's logout (RP-Initiated Logout).
//! - [`TokenEndpoint`], [`RevocationEndpoint`]: code exchange, refresh and revocation as a
//!   public or confidential [`Client`]; `invalid_grant` is its own [`Error`] variant.
//! - [`Verification`]: an id_token checked against the issuer's keys, under an algorithm the
//!   key allows (never `none`, never an HMAC, never one the header alone picks).
//! - [`RelyingParty`]: all of the above for one client at one provider, with the metadata
//!   discovered once and the keys fetched again when the provider rotates.
#![warn(missing_docs)]

mod authorization;
mod discovery;
mod error;
mod http;
mod id_token;
mod logout;
mod relying_party;
mod token;

pub use authorization::{AuthorizationRequest, random_token};
pub use discovery::{ProviderMetadata, discover};
pub use error::{Check, Error, Rejection};
pub use http::{get_json, http_client, tls_client_config};
pub use id_token::{Expected, IdClaims, Verification, read_unverified_claims};
pub use jsonwebtoken::jwk::JwkSet;
pub use logout::LogoutRequest;
pub use relying_party::RelyingParty;
pub use token::{
    Client, ClientAuthentication, ClientSecret, Renewed, RevocationEndpoint, TokenEndpoint, Tokens,
};
