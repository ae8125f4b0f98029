//! OpenID Connect RP-Initiated Logout 1.0 §2: the browser's way to the provider's
//! `end_session_endpoint`, to end its session there too.

use crate::Error;

/// A logout request, sent by redirecting the browser to the URL [`LogoutRequest::url`] makes.
#[derive(Clone, Copy, Debug)]
pub struct LogoutRequest<'a> {
    /// An id_token the provider issued to this client for the session to end (it may have
    /// expired): the provider's proof of who asks, so it can sign out without asking.
    pub id_token_hint: &'a str,
    /// The client.
    pub client_id: &'a str,
    /// Where the provider sends the browser afterwards; the provider compares it exactly with
    /// the client's registered ones (§3).
    pub post_logout_redirect_uri: &'a str,
    /// Handed back with the browser to `post_logout_redirect_uri`.
    pub state: &'a str,
}

impl LogoutRequest<'_> {
    /// The URL to send the browser to: `end_session_endpoint` with the request's parameters
    /// added to whatever query it has.
    pub fn url(&self, end_session_endpoint: &str) -> Result<url::Url, Error> {
        let mut url = url::Url::parse(end_session_endpoint).map_err(|e| Error::NotAUrl {
            url: end_session_endpoint.to_owned(),
            reason: e.to_string(),
        })?;
        url.query_pairs_mut()
            .append_pair("id_token_hint", self.id_token_hint)
            .append_pair("client_id", self.client_id)
            .append_pair("post_logout_redirect_uri", self.post_logout_redirect_uri)
            .append_pair("state", self.state);
        Ok(url)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn the_request_is_added_to_the_endpoints_own_query() {
        let request = LogoutRequest {
            id_token_hint: "a.b.c",
            client_id: "proxy",
            post_logout_redirect_uri: "https://app.example/oauth2/signed_out",
            state: "https://app.example/bye?x=1",
        };
        let url = request.url("https://idp.example/logout?tenant=a").unwrap();
        assert_eq!(
            url.as_str(),
            "https://idp.example/logout?tenant=a&id_token_hint=a.b.c&client_id=proxy\
             &post_logout_redirect_uri=https%3A%2F%2Fapp.example%2Foauth2%2Fsigned_out\
             &state=https%3A%2F%2Fapp.example%2Fbye%3Fx%3D1"
        );
        assert!(matches!(
            request.url("/logout"),
            Err(Error::NotAUrl { url, .. }) if url == "/logout"
        ));
    }
}
