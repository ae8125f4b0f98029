//! The authorization code flow in a browser (RFC 6749 §4.1 with PKCE, RFC 7636): the
//! authorization URL printed and, when there is a display, opened; the browser's return caught
//! on a loopback listener; the code exchanged and the id_token verified with its nonce.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tessera_oidc::{self as oidc, AuthorizationRequest, Expected, IdClaims, RelyingParty, Tokens};

use crate::loopback::LoopbackRedirect;

/// How long a login waits for the browser to come back.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The scopes kubectl asks for: identity, groups for RBAC, and a refresh token.
const SCOPES: &str = "openid profile email groups offline_access";

/// A finished login.
#[derive(Debug)]
pub struct LoggedIn {
    /// What the token endpoint answered.
    pub tokens: Tokens,
    /// The verified id_token's claims.
    pub claims: IdClaims,
}

/// Runs the authorization code flow: prints (and, when there is a display, opens) the
/// authorization URL and waits for the browser to come back to a loopback listener. A
/// `connector` (a tessera connector's id) goes along as `connector_id`, which makes the login
/// page show that connector's form only.
pub async fn browser_login(
    rp: &RelyingParty,
    connector: Option<&str>,
    open_browser: bool,
) -> Result<LoggedIn> {
    let provider = rp.metadata().await?;
    let redirect = LoopbackRedirect::bind().await?;
    let redirect_uri = redirect.uri();
    let state = oidc::random_token();
    let nonce = oidc::random_token();
    let verifier = oidc::random_token();
    let challenge = tessera_core::pkce::s256_challenge(&verifier);
    let mut url = AuthorizationRequest {
        client_id: &rp.client().id,
        redirect_uri: &redirect_uri,
        scope: SCOPES,
        state: &state,
        nonce: &nonce,
        code_challenge: &challenge,
    }
    .url(&provider.authorization_endpoint)?;
    if let Some(connector) = connector {
        url.query_pairs_mut().append_pair("connector_id", connector);
    }
    if open_browser && open_in_browser(url.as_str()) {
        eprintln!("Opened a browser to sign in. If it did not open, visit:\n\n    {url}\n");
    } else {
        eprintln!("Open this URL in a browser to sign in:\n\n    {url}\n");
    }
    let params = redirect.wait(&state, LOGIN_TIMEOUT).await?;
    let code = authorization_code(&params, &provider.issuer)?;
    let tokens = rp.exchange_code(code, &redirect_uri, &verifier).await?;
    let claims = rp
        .verify_id_token(&tokens.id_token, Expected::Nonce(&nonce))
        .await?;
    Ok(LoggedIn { tokens, claims })
}

/// The code of an authorization response (RFC 6749 §4.1.2), unless the provider refused, or
/// the response names another issuer than the one asked (RFC 9207 §2.4: a mix-up attack).
fn authorization_code<'p>(params: &'p HashMap<String, String>, issuer: &str) -> Result<&'p str> {
    if let Some(error) = params.get("error") {
        let description = params.get("error_description").map_or("", String::as_str);
        bail!("the provider refused the login: {error} {description}");
    }
    if let Some(iss) = params.get("iss")
        && iss != issuer
    {
        bail!(
            "the login came back from issuer {iss}, not {issuer} (RFC 9207); run the command again"
        );
    }
    params
        .get("code")
        .map(String::as_str)
        .context("the provider sent the browser back without a code")
}

/// Whether a browser can be shown: a graphical session on Linux, always on macOS.
pub fn has_display() -> bool {
    cfg!(target_os = "macos")
        || ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()))
}

/// Starts the desktop's browser on `url`; `false` when it could not be started.
fn open_in_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const ISSUER: &str = "https://tessera.example";

    fn response(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_code_counts_only_without_an_error_and_from_the_issuer_asked() {
        let code = response(&[("code", "c"), ("state", "s")]);
        assert_eq!(authorization_code(&code, ISSUER).unwrap(), "c");
        let same_issuer = response(&[("code", "c"), ("iss", ISSUER)]);
        assert_eq!(authorization_code(&same_issuer, ISSUER).unwrap(), "c");
        for (pairs, said) in [
            (
                &[("error", "access_denied"), ("error_description", "no")][..],
                "the provider refused the login: access_denied no",
            ),
            (
                &[("code", "c"), ("iss", "https://evil.example")][..],
                "the login came back from issuer https://evil.example, not https://tessera.example (RFC 9207); run the command again",
            ),
            (
                &[("state", "s")][..],
                "the provider sent the browser back without a code",
            ),
        ] {
            let error = authorization_code(&response(pairs), ISSUER).unwrap_err();
            assert_eq!(error.to_string(), said);
        }
    }
}
