//! The relying-party side of OpenID Connect that the kubectl plugin and the proxy need:
//! discovery, the code exchange, refresh, revocation and id_token verification (after a login
//! and after a refresh), over rustls with either a given CA bundle or the system's roots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde_json::Value;

/// How long one HTTP request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTPS client trusting `ca_file` (PEM), or the system's roots when there is none.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let pem = std::fs::read(file)
                .with_context(|| format!("cannot read the CA bundle {}", file.display()))?;
            add_pem_roots(&mut roots, &pem)
                .with_context(|| format!("{} holds no usable PEM certificate", file.display()))?;
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!(
                    "found no trusted CA certificates on this system; pass --certificate-authority FILE"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot build the HTTPS client")
}

/// Adds every certificate of a PEM bundle; fails when none is usable.
pub fn add_pem_roots(roots: &mut rustls::RootCertStore, pem: &[u8]) -> Result<()> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .context("not PEM")?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!("no certificate");
    }
    Ok(())
}

/// 32 random bytes as base64url: a state, a nonce or a PKCE verifier (RFC 7636 §4.1: 43
/// characters).
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The endpoints of an issuer (OpenID Connect Discovery 1.0 §3).
#[derive(Clone, Debug, Deserialize)]
pub struct Provider {
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
}

/// Fetches the discovery document and checks it names `issuer` (Discovery §4.3).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Provider> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    let provider: Provider = get_json(http, &url).await?;
    if provider.issuer.trim_end_matches('/') != issuer {
        bail!(
            "{url} names the issuer {}, not {issuer}; check --issuer",
            provider.issuer
        );
    }
    Ok(provider)
}

/// The cluster a tessera server publishes at `/kube/cluster`.
#[derive(Clone, Debug, Deserialize)]
pub struct Cluster {
    /// Name for kubeconfig entries.
    pub cluster_name: String,
    /// API server URL.
    pub server: String,
    /// Base64 PEM of the API server's CA, if it is not publicly trusted.
    #[serde(default)]
    pub certificate_authority_data: Option<String>,
    /// The client id kubectl uses.
    pub client_id: String,
}

/// Fetches `/kube/cluster` of a tessera issuer.
pub async fn cluster(http: &reqwest::Client, issuer: &str) -> Result<Cluster> {
    get_json(http, &format!("{issuer}/kube/cluster")).await
}

async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("cannot read the answer of {url}"))?;
    if !status.is_success() {
        bail!("{url} answered {status}: {}", describe_error_body(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} did not answer the expected JSON"))
}

/// What a token request answered.
#[derive(Clone, Deserialize)]
pub struct Tokens {
    /// The id_token (OpenID Connect Core §3.1.3.3).
    pub id_token: String,
    /// The next refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// The tokens are left out: a `{:?}` in a log or an error must not hand out a session.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("id_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A failed token request.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The grant is no longer valid: the session has ended or the token was spent.
    #[error("the provider refused the grant: {0}")]
    InvalidGrant(String),
    /// Anything else: network, server or protocol trouble; the grant may still be good.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// POSTs a token request (RFC 6749 §4.1.3, §6) as a public client.
pub async fn token_request(
    http: &reqwest::Client,
    token_endpoint: &str,
    form: &[(&str, &str)],
) -> Result<Tokens, TokenError> {
    let response = http
        .post(token_endpoint)
        .form(form)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {token_endpoint}: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("cannot read the answer of {token_endpoint}"))?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .with_context(|| format!("{token_endpoint} answered without an id_token"))
            .map_err(TokenError::Other);
    }
    let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if error["error"] == "invalid_grant" {
        return Err(TokenError::InvalidGrant(describe_error_body(&body)));
    }
    Err(anyhow!(
        "{token_endpoint} answered {status}: {}",
        describe_error_body(&body)
    )
    .into())
}

/// Revokes a refresh token (RFC 7009); an unknown token counts as revoked. A confidential
/// client authenticates with `client_secret_post`.
pub async fn revoke(
    http: &reqwest::Client,
    endpoint: &str,
    client_id: &str,
    client_secret: Option<&str>,
    refresh_token: &str,
) -> Result<()> {
    let mut form = vec![
        ("token", refresh_token),
        ("token_type_hint", "refresh_token"),
        ("client_id", client_id),
    ];
    if let Some(secret) = client_secret {
        form.push(("client_secret", secret));
    }
    let response = http
        .post(endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {endpoint}: {}", error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        bail!(
            "{endpoint} answered {status}: {}",
            describe_error_body(&body)
        );
    }
    Ok(())
}

/// The claims of an id_token that the plugin reads.
#[derive(Clone, Debug, Deserialize)]
pub struct IdClaims {
    /// Subject.
    pub sub: String,
    /// Issued at, seconds.
    pub iat: i64,
    /// Expiry, seconds.
    pub exp: i64,
    /// The login name, when the provider sends one.
    #[serde(default)]
    pub preferred_username: Option<String>,
    /// The nonce of the authorization request.
    #[serde(default)]
    pub nonce: Option<String>,
}

impl IdClaims {
    /// The name a human knows the account by.
    pub fn username(&self) -> &str {
        self.preferred_username.as_deref().unwrap_or(&self.sub)
    }
}

/// Reads the claims of an id_token that came straight from the token endpoint over TLS
/// (OpenID Connect Core §3.1.3.7 allows skipping the signature check then); the API server
/// verifies the signature of every request anyway.
pub fn read_claims<T: serde::de::DeserializeOwned>(id_token: &str) -> Result<T> {
    let payload = id_token
        .split('.')
        .nth(1)
        .context("the id_token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .context("the id_token's payload is not base64url")?;
    serde_json::from_slice(&bytes).context("the id_token's payload lacks a claim it needs")
}

/// What an id_token must carry besides the issuer's signature, issuer, audience and expiry.
#[derive(Clone, Copy, Debug)]
pub enum Expected<'a> {
    /// After a login: the nonce of its authorization request (OpenID Connect Core §3.1.3.7).
    Nonce(&'a str),
    /// After a refresh: the subject of the session it renews (OpenID Connect Core §12.2).
    Subject(&'a str),
}

/// Why an id_token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    /// The issuer's keys could not be fetched: nothing is known about the token yet.
    #[error(transparent)]
    Keys(anyhow::Error),
    /// The token names a key the issuer's key set does not hold (fetch it again: the issuer
    /// may have rotated).
    #[error("the issuer's JWKS has no key {kid}")]
    UnknownKey {
        /// The `kid` the token names.
        kid: String,
    },
    /// Not a token the issuer signed for this client and this login or session.
    #[error("{0}")]
    Invalid(String),
}

/// Signature algorithms an id_token may use (RFC 7518 §3.1): public-key ones only, never
/// `none` nor an HMAC, whose key would be the client secret.
const SIGNATURE_ALGORITHMS: [jsonwebtoken::Algorithm; 9] = {
    use jsonwebtoken::Algorithm::{ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512};
    [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ]
};

/// Verifies an id_token after a login: signature against the issuer's JWKS with the key's own
/// algorithm, issuer, audience, expiry and the nonce we sent.
pub async fn verify_id_token(
    http: &reqwest::Client,
    provider: &Provider,
    client_id: &str,
    id_token: &str,
    nonce: &str,
) -> Result<IdClaims> {
    let keys = jwks(http, provider).await?;
    Ok(verify_with(
        &keys,
        provider,
        client_id,
        id_token,
        Expected::Nonce(nonce),
    )?)
}

/// The issuer's signing keys (its JWKS).
pub async fn jwks(http: &reqwest::Client, provider: &Provider) -> Result<JwkSet> {
    get_json(http, &provider.jwks_uri).await
}

/// Verifies an id_token against keys already fetched: its signature with the key its `kid`
/// names, under that key's own algorithm (a public-key one), its issuer, audience (our
/// client id), expiry, and what `expected` asks.
pub fn verify_with(
    keys: &JwkSet,
    provider: &Provider,
    client_id: &str,
    id_token: &str,
    expected: Expected<'_>,
) -> Result<IdClaims, IdTokenError> {
    let invalid = |why: String| IdTokenError::Invalid(why);
    let header = jsonwebtoken::decode_header(id_token)
        .map_err(|e| invalid(format!("the id_token is not a JWT: {e}")))?;
    let kid = header
        .kid
        .ok_or_else(|| invalid("the id_token names no key (kid)".into()))?;
    let jwk = keys
        .find(&kid)
        .ok_or_else(|| IdTokenError::UnknownKey { kid: kid.clone() })?;
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse().ok())
        .filter(|alg| SIGNATURE_ALGORITHMS.contains(alg))
        .ok_or_else(|| {
            invalid(format!(
                "the issuer's key {kid} names no public-key algorithm"
            ))
        })?;
    if header.alg != alg {
        return Err(invalid(format!(
            "the id_token is signed with {:?}, but its key is for {alg:?}",
            header.alg
        )));
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
        .map_err(|e| invalid(format!("the issuer's key {kid} is unusable: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&[&provider.issuer]);
    validation.set_audience(&[client_id]);
    let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
        .map_err(|e| invalid(format!("the id_token does not verify: {e}")))?
        .claims;
    let matches = |found: Option<&str>, wanted: &str| {
        found
            .is_some_and(|f| tessera_core::token::constant_time_eq(f.as_bytes(), wanted.as_bytes()))
    };
    match expected {
        Expected::Nonce(nonce) if !matches(claims.nonce.as_deref(), nonce) => Err(invalid(
            "the id_token's nonce does not match this login; try again".into(),
        )),
        Expected::Subject(sub) if !matches(Some(&claims.sub), sub) => Err(invalid(format!(
            "the refreshed id_token is for subject {:?}, not the session's",
            claims.sub
        ))),
        _ => Ok(claims),
    }
}

/// `error_description` (or `error`) of an OAuth error body, or the body's start.
fn describe_error_body(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (json["error"].as_str(), json["error_description"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_owned(),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// reqwest's error with its causes, which say what actually went wrong (refused, TLS, …).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
