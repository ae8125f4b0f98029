//! The authorization code flow as the benchmark drivers that mint sessions run it (`bench_refresh`,
//! `bench_connector`): kubectl's public client with PKCE, the code from a redirect, and the
//! refresh token of a `/token` answer. Included by each with `#[path]`, beside `bench_support`.

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The PKCE verifier of every benchmark login.
pub(crate) const VERIFIER: &str = "bench-verifier-that-is-long-enough-for-rfc-7636-section-4-1";
/// kubectl's loopback redirect (nothing listens: the code is read from the `Location`).
pub(crate) const REDIRECT_URI: &str = "http://127.0.0.1:41234/callback";
/// The public client `tessera serve --dev` registers for kubectl.
pub(crate) const CLIENT_ID: &str = "kubernetes";

/// The refresh token of a code exchange with PKCE.
pub(crate) async fn exchange_at(
    client: &reqwest::Client,
    token_url: &reqwest::Url,
    code: &str,
) -> Result<String> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
        ("client_id", CLIENT_ID),
        ("code_verifier", VERIFIER),
    ];
    token_request(client, token_url, &form).await
}

#[derive(Deserialize)]
struct TokenAnswer {
    refresh_token: String,
}

/// POSTs to `/token`; the answer's refresh token, or why there is none.
pub(crate) async fn token_request(
    client: &reqwest::Client,
    token_url: &reqwest::Url,
    form: &[(&str, &str)],
) -> Result<String> {
    let response = client.post(token_url.clone()).form(form).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!(
            "/token answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice::<TokenAnswer>(&body)?.refresh_token)
}

pub(crate) fn auth_query() -> [(&'static str, String); 8] {
    [
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", REDIRECT_URI.into()),
        ("response_type", "code".into()),
        ("scope", "openid profile email groups".into()),
        ("state", "bench-state".into()),
        ("nonce", "bench-nonce".into()),
        (
            "code_challenge",
            URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes())),
        ),
        ("code_challenge_method", "S256".into()),
    ]
}

pub(crate) fn location(response: &reqwest::Response) -> Result<String> {
    Ok(response
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or_else(|| anyhow!("expected a redirect, got {}", response.status()))?
        .to_str()?
        .to_owned())
}

pub(crate) fn code_from(location: &str) -> Result<String> {
    url::Url::parse(location)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow!("no code in {location}"))
}
