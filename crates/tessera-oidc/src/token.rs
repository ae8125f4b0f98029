//! The token endpoint (RFC 6749 §3.2: the authorization-code exchange of §4.1.3 and the
//! refresh of §6) and the revocation endpoint (RFC 7009), called as one client: public, or
//! confidential with `client_secret_post` or `client_secret_basic` (§2.3.1).
//!
//! An `invalid_grant` answer is its own error ([`Error::InvalidGrant`]): the code or refresh
//! token is dead and must not be presented again. Every other failure may be passing, and the
//! grant kept.

use base64::Engine as _;
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;
use crate::http::{answer, describe_error_body, error_chain};

/// A client of the provider: its id and how it authenticates.
#[derive(Clone, Debug)]
pub struct Client {
    /// The client id.
    pub id: String,
    /// How it proves it is that client.
    pub authentication: ClientAuthentication,
}

/// How a client authenticates at the token and revocation endpoints (OpenID Connect Core §9).
#[derive(Clone, Debug)]
pub enum ClientAuthentication {
    /// A public client (a kubectl plugin, RFC 8252): its id alone, in the form.
    None,
    /// `client_secret_post`: id and secret in the form.
    SecretPost(ClientSecret),
    /// `client_secret_basic`: id and secret in an `Authorization: Basic` header.
    SecretBasic(ClientSecret),
}

/// A client secret; its `Debug` says nothing of it.
#[derive(Clone)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> ClientSecret {
        ClientSecret(secret.into())
    }

    /// The secret itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

impl Client {
    /// A public client.
    pub fn public(id: impl Into<String>) -> Client {
        Client {
            id: id.into(),
            authentication: ClientAuthentication::None,
        }
    }

    /// A POST of `form` to `url` as this client.
    fn post<'a>(
        &'a self,
        http: &reqwest::Client,
        url: &str,
        mut form: Vec<(&'static str, &'a str)>,
    ) -> reqwest::RequestBuilder {
        let request = http.post(url);
        match &self.authentication {
            ClientAuthentication::None => form.push(("client_id", &self.id)),
            ClientAuthentication::SecretPost(secret) => {
                form.push(("client_id", &self.id));
                form.push(("client_secret", secret.expose()));
            }
            ClientAuthentication::SecretBasic(secret) => {
                return request
                    .header(reqwest::header::AUTHORIZATION, basic(&self.id, secret))
                    .form(&form);
            }
        }
        request.form(&form)
    }
}

/// `Basic base64(id:secret)`, each form-urlencoded first (RFC 6749 §2.3.1).
fn basic(id: &str, secret: &ClientSecret) -> String {
    let encode =
        |text: &str| -> String { url::form_urlencoded::byte_serialize(text.as_bytes()).collect() };
    let pair = format!("{}:{}", encode(id), encode(secret.expose()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    format!("Basic {encoded}")
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

/// What a refresh answered where the id_token is optional: OpenID Connect Core §12.2 lets a
/// provider leave it out of a refresh's answer.
#[derive(Clone, Deserialize)]
pub struct Renewed {
    /// The new id_token, if the provider sent one.
    #[serde(default)]
    pub id_token: Option<String>,
    /// The next refresh token; `None` when the provider does not rotate.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// The tokens are left out, as for [`Tokens`].
impl std::fmt::Debug for Renewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("Renewed")
            .field("id_token", &redacted(&self.id_token))
            .field("refresh_token", &redacted(&self.refresh_token))
            .finish()
    }
}

/// The provider's token endpoint, called as one client.
#[derive(Clone, Copy, Debug)]
pub struct TokenEndpoint<'a> {
    /// The HTTPS client.
    pub http: &'a reqwest::Client,
    /// The endpoint's URL.
    pub url: &'a str,
    /// Who calls.
    pub client: &'a Client,
}

impl TokenEndpoint<'_> {
    /// Redeems an authorization code (RFC 6749 §4.1.3) with its PKCE verifier (RFC 7636 §4.5).
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Tokens, Error> {
        self.request(vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ])
        .await
    }

    /// Redeems a refresh token (RFC 6749 §6).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, Error> {
        self.request(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// Redeems a refresh token (RFC 6749 §6), accepting an answer without an id_token.
    pub async fn renew(&self, refresh_token: &str) -> Result<Renewed, Error> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.request_as(form).await
    }

    async fn request(&self, form: Vec<(&'static str, &str)>) -> Result<Tokens, Error> {
        self.request_as(form).await
    }

    async fn request_as<T: DeserializeOwned>(
        &self,
        form: Vec<(&'static str, &str)>,
    ) -> Result<T, Error> {
        let post = self.client.post(self.http, self.url, form);
        let (status, body) = answer(post, self.url).await?;
        token_answer(self.url, status, &body)
    }
}

/// Reads a token endpoint's answer: the tokens, `invalid_grant`, or another failure.
fn token_answer<T: DeserializeOwned>(
    url: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<T, Error> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| Error::NoIdToken {
            url: url.to_owned(),
            reason: e.to_string(),
        });
    }
    let error: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if error["error"] == "invalid_grant" {
        return Err(Error::InvalidGrant {
            description: describe_error_body(body),
        });
    }
    Err(Error::Status {
        url: url.to_owned(),
        status,
        description: describe_error_body(body),
    })
}

/// The provider's revocation endpoint (RFC 7009), called as one client.
#[derive(Clone, Copy, Debug)]
pub struct RevocationEndpoint<'a> {
    /// The HTTPS client.
    pub http: &'a reqwest::Client,
    /// The endpoint's URL.
    pub url: &'a str,
    /// Who calls.
    pub client: &'a Client,
}

impl RevocationEndpoint<'_> {
    /// Revokes a refresh token, and with it (at tessera) its session. An unknown token counts
    /// as revoked (RFC 7009 §2.2).
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), Error> {
        let form = vec![
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ];
        let response = self
            .client
            .post(self.http, self.url, form)
            .send()
            .await
            .map_err(|e| Error::Unreachable {
                url: self.url.to_owned(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(Error::Status {
            url: self.url.to_owned(),
            status,
            description: describe_error_body(&body),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    const URL: &str = "https://idp.example/token";

    /// The form and `Authorization` header `client` sends along `form`.
    fn sent(client: &Client, form: Vec<(&'static str, &str)>) -> (String, Option<String>) {
        let http = crate::http::client_trusting(rustls::RootCertStore::empty()).unwrap();
        let request = client.post(&http, URL, form).build().unwrap();
        let body = request.body().and_then(|b| b.as_bytes()).unwrap();
        let authorization = request
            .headers()
            .get(reqwest::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        (String::from_utf8(body.to_vec()).unwrap(), authorization)
    }

    #[test]
    fn each_client_authentication_puts_its_credentials_where_it_belongs() {
        let grant = || vec![("grant_type", "refresh_token"), ("refresh_token", "r")];
        let public = Client::public("kubectl");
        assert_eq!(
            sent(&public, grant()),
            (
                "grant_type=refresh_token&refresh_token=r&client_id=kubectl".into(),
                None
            )
        );
        let post = Client {
            id: "rp".into(),
            authentication: ClientAuthentication::SecretPost(ClientSecret::new("s&t")),
        };
        assert_eq!(
            sent(&post, grant()).0,
            "grant_type=refresh_token&refresh_token=r&client_id=rp&client_secret=s%26t"
        );
        // RFC 6749 §2.3.1: each part form-urlencoded, then base64 of `id:secret`.
        let basic = Client {
            id: "my rp".into(),
            authentication: ClientAuthentication::SecretBasic(ClientSecret::new("p:ss")),
        };
        let (form, header) = sent(&basic, grant());
        assert_eq!(form, "grant_type=refresh_token&refresh_token=r");
        let expected = base64::engine::general_purpose::STANDARD.encode("my+rp:p%3Ass");
        assert_eq!(header, Some(format!("Basic {expected}")));
    }

    #[test]
    fn a_secret_is_never_in_debug_output() {
        let client = Client {
            id: "rp".into(),
            authentication: ClientAuthentication::SecretBasic(ClientSecret::new("hunter2")),
        };
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn token_answers_are_read_as_tokens_invalid_grant_or_a_failure() {
        let ok: Tokens = token_answer(URL, StatusCode::OK, br#"{"id_token":"a.b.c"}"#).unwrap();
        assert_eq!(ok.id_token, "a.b.c");
        assert_eq!(ok.refresh_token, None);
        let spent = br#"{"error":"invalid_grant","error_description":"spent"}"#;
        assert_eq!(
            token_answer::<Tokens>(URL, StatusCode::BAD_REQUEST, spent).unwrap_err(),
            Error::InvalidGrant {
                description: "invalid_grant: spent".into()
            }
        );
        let busy =
            token_answer::<Tokens>(URL, StatusCode::SERVICE_UNAVAILABLE, b"busy").unwrap_err();
        assert_eq!(
            busy.to_string(),
            format!("{URL} answered 503 Service Unavailable: busy")
        );
        assert!(!busy.is_refusal());
        let no_id_token = token_answer::<Tokens>(URL, StatusCode::OK, br#"{"access_token":"x"}"#);
        assert!(matches!(no_id_token, Err(Error::NoIdToken { .. })));
        // A refresh may come without an id_token (OpenID Connect Core §12.2).
        let renewed: Renewed = token_answer(
            URL,
            StatusCode::OK,
            br#"{"access_token":"x","refresh_token":"r2"}"#,
        )
        .unwrap();
        assert_eq!(renewed.id_token, None);
        assert_eq!(renewed.refresh_token.as_deref(), Some("r2"));
    }
}
