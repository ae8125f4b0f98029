//! The start of a login at the provider: the authorization request of the code flow
//! (OpenID Connect Core §3.1.2.1) with PKCE S256 (RFC 7636), and the random values it carries.

use base64::Engine as _;

use crate::Error;

/// 32 random bytes as base64url: a state, a nonce or a PKCE verifier (RFC 7636 §4.1: 43
/// characters).
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What one authorization request asks for. The caller keeps `state`, `nonce` and the PKCE
/// verifier behind `code_challenge` until the browser comes back.
#[derive(Clone, Copy, Debug)]
pub struct AuthorizationRequest<'a> {
    /// The client.
    pub client_id: &'a str,
    /// Where the browser comes back with the code.
    pub redirect_uri: &'a str,
    /// Space-separated scopes; `openid` among them.
    pub scope: &'a str,
    /// Ties the answer to this request (RFC 6749 §10.12).
    pub state: &'a str,
    /// Ties the id_token to this request (OpenID Connect Core §3.1.2.1).
    pub nonce: &'a str,
    /// The S256 challenge of the verifier (RFC 7636 §4.2).
    pub code_challenge: &'a str,
}

impl AuthorizationRequest<'_> {
    /// The URL to send the browser to: `authorization_endpoint` with the request's parameters
    /// added to whatever query it has.
    pub fn url(&self, authorization_endpoint: &str) -> Result<url::Url, Error> {
        let mut url = url::Url::parse(authorization_endpoint).map_err(|e| Error::NotAUrl {
            url: authorization_endpoint.to_owned(),
            reason: e.to_string(),
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", self.client_id)
            .append_pair("redirect_uri", self.redirect_uri)
            .append_pair("scope", self.scope)
            .append_pair("state", self.state)
            .append_pair("nonce", self.nonce)
            .append_pair("code_challenge", self.code_challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn request() -> AuthorizationRequest<'static> {
        AuthorizationRequest {
            client_id: "kubernetes",
            redirect_uri: "http://127.0.0.1:4000/callback",
            scope: "openid groups",
            state: "s",
            nonce: "n",
            code_challenge: "c",
        }
    }

    #[test]
    fn the_request_is_added_to_the_endpoints_own_query() {
        let url = request()
            .url("https://idp.example/authorize?tenant=a")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://idp.example/authorize?tenant=a&response_type=code&client_id=kubernetes\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A4000%2Fcallback&scope=openid+groups&state=s\
             &nonce=n&code_challenge=c&code_challenge_method=S256"
        );
    }

    #[test]
    fn an_endpoint_that_is_not_a_url_is_named_in_the_error() {
        let error = request().url("/authorize").unwrap_err();
        assert!(matches!(&error, Error::NotAUrl { url, .. } if url == "/authorize"));
    }

    #[test]
    fn random_tokens_are_43_base64url_characters_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }
}
