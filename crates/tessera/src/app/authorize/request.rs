//! The authorization request (RFC 6749 §4.1.1, OpenID Connect Core §3.1.2.1, RFC 7636 §4.3)
//! validated into an [`AuthRequest`]. Pure: the parameters and the registered client are all it
//! reads. It validates in two stages, because they fail differently (RFC 6749 §4.1.2.1): until
//! the client and its redirect URI are trusted, an error is a page for the user; after that, a
//! [`Refusal`] that the caller sends back to the client through that redirect URI.

use tessera_core::pkce;

use super::{AuthRequest, AuthorizeError, redirect_allowed};
use crate::config::Client;

/// Scopes tessera grants, in the order it reports them.
const KNOWN_SCOPES: [&str; 5] = ["openid", "profile", "email", "groups", "offline_access"];

/// Longest `nonce` accepted, in bytes: it is stored and signed into every id_token.
const MAX_NONCE_LEN: usize = 512;

/// Longest `state` accepted, in bytes: it travels through the login form and back.
const MAX_STATE_LEN: usize = 2048;

/// A parameter refused after the redirect URI is trusted: an RFC 6749 §4.1.2.1 error code and
/// its description, for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The `error` code.
    pub(crate) error: &'static str,
    /// The `error_description`.
    pub(crate) description: &'static str,
}

/// The client the request names and the redirect URI registered for it; anything else is a
/// page, never a redirect. `client` finds a registered client by id.
pub(super) fn trusted_redirect<'c>(
    param: &impl Fn(&str) -> Option<String>,
    client: impl Fn(&str) -> Option<&'c Client>,
) -> Result<(&'c Client, String), AuthorizeError> {
    let client_id = param("client_id")
        .ok_or_else(|| AuthorizeError::Page("The request names no client_id.".into()))?;
    let client = client(&client_id)
        .ok_or_else(|| AuthorizeError::Page(format!("Unknown client `{client_id}`.")))?;
    let redirect_uri = param("redirect_uri")
        .ok_or_else(|| AuthorizeError::Page("The request has no redirect_uri.".into()))?;
    if !redirect_allowed(client, &redirect_uri) {
        return Err(AuthorizeError::Page(format!(
            "The redirect_uri `{redirect_uri}` is not registered for client `{client_id}`."
        )));
    }
    Ok((client, redirect_uri))
}

/// The rest of the request, for `client` and its trusted `redirect_uri`, checked in the order
/// the refusals are reported: response type, scope, PKCE, then `state` and `nonce`.
pub(super) fn check(
    param: &impl Fn(&str) -> Option<String>,
    client: &Client,
    redirect_uri: &str,
    state: Option<&str>,
) -> Result<AuthRequest, Refusal> {
    check_response_type(param("response_type").as_deref())?;
    let scope = granted_scope(&param("scope").unwrap_or_default())?;
    let code_challenge = param("code_challenge");
    check_pkce(
        param("code_challenge_method").as_deref(),
        code_challenge.as_deref(),
        client.public,
    )?;
    let prompt = param("prompt").unwrap_or_default();
    let max_age = max_age(param("max_age").as_deref())?;
    let nonce = param("nonce");
    check_state_and_nonce(state, nonce.as_deref())?;
    Ok(AuthRequest {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        scope,
        state: state.map(str::to_owned),
        nonce,
        code_challenge,
        force_login: prompt.split(' ').any(|p| p == "login"),
        no_prompt: prompt.split(' ').any(|p| p == "none"),
        connector_id: param("connector_id"),
        max_age,
    })
}

/// `max_age` (OpenID Connect Core §3.1.2.1): whole seconds, 0 included.
fn max_age(text: Option<&str>) -> Result<Option<u64>, Refusal> {
    match text {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| Refusal {
            error: "invalid_request",
            description: "max_age must be a whole number of seconds",
        }),
    }
}

fn refuse(error: &'static str, description: &'static str) -> Result<(), Refusal> {
    Err(Refusal { error, description })
}

/// Only the code flow (RFC 6749 §4.1.1).
fn check_response_type(response_type: Option<&str>) -> Result<(), Refusal> {
    match response_type {
        Some("code") => Ok(()),
        Some(_) => refuse(
            "unsupported_response_type",
            "only response_type=code is supported",
        ),
        None => refuse("invalid_request", "response_type is required"),
    }
}

/// The known scopes asked for, in [`KNOWN_SCOPES`] order; unknown ones are ignored (RFC 6749
/// §3.3 lets the server grant less). `openid` is required: this is an OpenID provider.
fn granted_scope(requested: &str) -> Result<String, Refusal> {
    let scope: Vec<&str> = KNOWN_SCOPES
        .into_iter()
        .filter(|known| requested.split(' ').any(|s| s == *known))
        .collect();
    if !scope.contains(&"openid") {
        return Err(Refusal {
            error: "invalid_scope",
            description: "the scope must include openid",
        });
    }
    Ok(scope.join(" "))
}

/// PKCE (RFC 7636 §4.3): S256 only, required of public clients, optional for confidential
/// ones, and never half sent.
fn check_pkce(method: Option<&str>, challenge: Option<&str>, public: bool) -> Result<(), Refusal> {
    match (method, challenge) {
        (_, None) if public => refuse(
            "invalid_request",
            "public clients must use PKCE (code_challenge with S256)",
        ),
        (Some("S256"), Some(c)) if pkce::is_valid_s256_challenge(c) => Ok(()),
        (Some("S256"), Some(_)) => refuse(
            "invalid_request",
            "code_challenge is not a valid S256 challenge",
        ),
        (_, Some(_)) => refuse("invalid_request", "code_challenge_method must be S256"),
        (Some(_), None) => refuse(
            "invalid_request",
            "code_challenge_method without code_challenge",
        ),
        (None, None) => Ok(()),
    }
}

/// Bounded lengths for both; and no control characters in the nonce, which is stored and
/// signed into the id_token (NUL above all, which PostgreSQL refuses to store).
fn check_state_and_nonce(state: Option<&str>, nonce: Option<&str>) -> Result<(), Refusal> {
    if nonce.is_some_and(|n| n.len() > MAX_NONCE_LEN)
        || state.is_some_and(|s| s.len() > MAX_STATE_LEN)
    {
        return refuse("invalid_request", "state or nonce is too long");
    }
    if nonce.is_some_and(|n| n.chars().any(char::is_control)) {
        return refuse("invalid_request", "the nonce contains control characters");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use tessera_core::id::ClientId;

    use super::*;

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn client(public: bool) -> Client {
        Client {
            id: ClientId::new("kubernetes"),
            public,
            secret_hash: None,
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            post_logout_redirect_uris: vec![],
        }
    }

    fn params<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn refusal(error: &'static str, description: &'static str) -> Result<(), Refusal> {
        Err(Refusal { error, description })
    }

    #[test]
    fn an_untrusted_client_or_redirect_is_a_page_naming_what_is_wrong() {
        let registered = client(true);
        let find = |id: &str| (id == "kubernetes").then_some(&registered);
        let table: [(&[(&str, &str)], &str); 4] = [
            (&[], "The request names no client_id."),
            (&[("client_id", "nobody")], "Unknown client `nobody`."),
            (
                &[("client_id", "kubernetes")],
                "The request has no redirect_uri.",
            ),
            (
                &[
                    ("client_id", "kubernetes"),
                    ("redirect_uri", "https://evil.example/cb"),
                ],
                "The redirect_uri `https://evil.example/cb` is not registered for client `kubernetes`.",
            ),
        ];
        for (pairs, expected) in table {
            match trusted_redirect(&params(pairs), find) {
                Err(AuthorizeError::Page(message)) => assert_eq!(message, expected),
                other => panic!("{pairs:?}: expected a page, got {other:?}"),
            }
        }
        let pairs = [
            ("client_id", "kubernetes"),
            ("redirect_uri", "http://127.0.0.1:4711/callback"),
        ];
        let (found, redirect) = trusted_redirect(&params(&pairs), find).unwrap();
        assert_eq!(found.id.as_str(), "kubernetes");
        assert_eq!(redirect, "http://127.0.0.1:4711/callback");
    }

    #[test]
    fn only_the_code_response_type_is_accepted() {
        assert_eq!(check_response_type(Some("code")), Ok(()));
        assert_eq!(
            check_response_type(Some("token")),
            refusal(
                "unsupported_response_type",
                "only response_type=code is supported"
            )
        );
        assert_eq!(
            check_response_type(None),
            refusal("invalid_request", "response_type is required")
        );
    }

    #[test]
    fn known_scopes_are_granted_in_their_order_and_openid_is_required() {
        let table = [
            ("openid", Some("openid")),
            ("groups email openid", Some("openid email groups")),
            (
                "openid unknown offline_access",
                Some("openid offline_access"),
            ),
            ("openid  profile", Some("openid profile")),
            ("profile email", None),
            ("", None),
            ("OpenID", None),
        ];
        for (requested, expected) in table {
            let granted = granted_scope(requested);
            match expected {
                Some(scope) => assert_eq!(granted.as_deref(), Ok(scope), "{requested}"),
                None => assert_eq!(
                    granted,
                    Err(Refusal {
                        error: "invalid_scope",
                        description: "the scope must include openid"
                    }),
                    "{requested}"
                ),
            }
        }
    }

    #[test]
    fn pkce_is_s256_only_required_of_public_clients_and_never_half_sent() {
        let bad = "not-a-challenge";
        let must_use = "public clients must use PKCE (code_challenge with S256)";
        let not_valid = "code_challenge is not a valid S256 challenge";
        let must_be_s256 = "code_challenge_method must be S256";
        let without = "code_challenge_method without code_challenge";
        #[rustfmt::skip]
        let table = [
            (Some("S256"), Some(CHALLENGE), true, None),
            (Some("S256"), Some(CHALLENGE), false, None),
            (None, None, false, None),
            (None, None, true, Some(must_use)),
            (Some("S256"), None, true, Some(must_use)),
            (Some("plain"), None, true, Some(must_use)),
            (Some("S256"), Some(bad), true, Some(not_valid)),
            (Some("S256"), Some(bad), false, Some(not_valid)),
            (Some("plain"), Some(CHALLENGE), true, Some(must_be_s256)),
            (None, Some(CHALLENGE), false, Some(must_be_s256)),
            (Some("S256"), None, false, Some(without)),
            (Some("plain"), None, false, Some(without)),
        ];
        for (method, challenge, public, expected) in table {
            let expected = expected.map_or(Ok(()), |d| refusal("invalid_request", d));
            assert_eq!(
                check_pkce(method, challenge, public),
                expected,
                "{method:?} {challenge:?} public={public}"
            );
        }
    }

    #[test]
    fn state_and_nonce_are_bounded_and_the_nonce_is_printable() {
        let too_long = "state or nonce is too long";
        let control = "the nonce contains control characters";
        let long_nonce = "n".repeat(MAX_NONCE_LEN + 1);
        let long_state = "s".repeat(MAX_STATE_LEN + 1);
        let (max_nonce, max_state) = ("n".repeat(MAX_NONCE_LEN), "s".repeat(MAX_STATE_LEN));
        let table: [(Option<&str>, Option<&str>, Option<&str>); 7] = [
            (None, None, None),
            (Some(max_state.as_str()), Some(max_nonce.as_str()), None),
            (Some(long_state.as_str()), None, Some(too_long)),
            (None, Some(long_nonce.as_str()), Some(too_long)),
            (None, Some("a\0b"), Some(control)),
            (None, Some("line\nbreak"), Some(control)),
            (Some("tab\tin state is fine"), None, None),
        ];
        for (state, nonce, expected) in table {
            let expected = expected.map_or(Ok(()), |d| refusal("invalid_request", d));
            assert_eq!(check_state_and_nonce(state, nonce), expected);
        }
    }

    #[test]
    fn a_valid_request_keeps_every_parameter_and_reads_the_prompt() {
        let pairs = [
            ("response_type", "code"),
            ("scope", "email openid"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("nonce", "n-0S6"),
            ("prompt", "consent login"),
        ];
        let request = check(
            &params(&pairs),
            &client(true),
            "http://127.0.0.1/callback",
            Some("xyz"),
        )
        .unwrap();
        assert_eq!(request.client_id, ClientId::new("kubernetes"));
        assert_eq!(request.redirect_uri, "http://127.0.0.1/callback");
        assert_eq!(request.scope, "openid email");
        assert_eq!(request.state.as_deref(), Some("xyz"));
        assert_eq!(request.nonce.as_deref(), Some("n-0S6"));
        assert_eq!(request.code_challenge.as_deref(), Some(CHALLENGE));
        assert!(request.force_login);
        assert!(!request.no_prompt);
    }

    #[test]
    fn the_first_failing_check_is_the_one_reported() {
        let pairs = [("response_type", "token"), ("scope", "profile")];
        let refused = check(
            &params(&pairs),
            &client(true),
            "http://127.0.0.1/callback",
            None,
        );
        assert_eq!(
            refused.unwrap_err().error,
            "unsupported_response_type",
            "the response type is checked before the scope and PKCE"
        );
        let pairs = [("response_type", "code"), ("scope", "profile")];
        let refused = check(
            &params(&pairs),
            &client(true),
            "http://127.0.0.1/callback",
            None,
        );
        assert_eq!(refused.unwrap_err().error, "invalid_scope");
    }
}
