//! An upstream OpenID Connect provider as a connector (`type: oidc`): people sign in there with
//! the authorization code flow (PKCE S256, nonce, state), the id_token is verified against the
//! upstream's keys, and its claims become theirs. The protocol itself is the relying-party
//! module the proxy and the kubectl client use too ([`tessera_oidc::RelyingParty`]); this file
//! only maps claims and says what a login and a re-validation found.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tessera_oidc::{
    self as oidc, AuthorizationRequest, Client, ClientAuthentication, ClientSecret, Expected,
    IdClaims, RelyingParty,
};

use super::{Identity, Person, groups, subject_for};
use crate::config::{ClaimNames, GroupMapping, OidcConfig};

/// One `type: oidc` connector: tessera as a confidential client of the upstream.
#[derive(Debug)]
pub struct Oidc {
    connector_id: String,
    issuer: String,
    rp: RelyingParty,
    scope: String,
    claims: ClaimNames,
    timeout: Duration,
    revalidate_interval: Duration,
    revalidate_max_staleness: Duration,
}

/// What a login or a re-validation at the upstream found.
#[derive(Debug)]
pub struct Upstream {
    /// The person, with claims after mapping.
    pub person: Person,
    /// Their subject at the upstream, which a refreshed id_token must name again.
    pub sub: String,
    /// The upstream's (new) refresh token, if it sent one.
    pub refresh_token: Option<String>,
}

impl Oidc {
    /// Builds the connector: reads the client secret (a private file) and the CA bundle, so a
    /// missing or exposed file stops the start with a sentence naming it. The upstream is
    /// discovered on first use, so that tessera starts while it is down.
    pub fn new(connector_id: &str, config: &OidcConfig) -> Result<Oidc, String> {
        let secret = read_secret(&config.client_secret_file)?;
        let http = oidc::http_client(config.certificate_authority.as_deref())
            .map_err(|e| format!("certificate_authority: {e}"))?;
        let client = Client {
            id: config.client_id.clone(),
            // The default of OpenID Connect Core §9, which every provider supports.
            authentication: ClientAuthentication::SecretBasic(ClientSecret::new(secret)),
        };
        Ok(Oidc {
            connector_id: connector_id.to_owned(),
            issuer: config.issuer.clone(),
            rp: RelyingParty::new(http, config.issuer.clone(), client),
            scope: config.scopes.join(" "),
            claims: config.claims.clone(),
            timeout: config.timeout,
            revalidate_interval: config.revalidate_interval,
            revalidate_max_staleness: config.revalidate_max_staleness,
        })
    }

    /// `(revalidate_interval, revalidate_max_staleness)`.
    pub fn revalidation(&self) -> (Duration, Duration) {
        (self.revalidate_interval, self.revalidate_max_staleness)
    }

    /// The bound on one step at the upstream (a login's start, its callback, a re-validation),
    /// also the lease that keeps other replicas from asking at the same time.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `step`, or [`oidc::Error::Unreachable`] when the upstream takes longer than `timeout`:
    /// a slow upstream is a sentence on a page or a tolerated re-validation, never a hang.
    async fn bounded<T>(
        &self,
        step: impl Future<Output = Result<T, oidc::Error>>,
    ) -> Result<T, oidc::Error> {
        tokio::time::timeout(self.timeout, step)
            .await
            .unwrap_or_else(|_| {
                Err(oidc::Error::Unreachable {
                    url: self.issuer.clone(),
                    reason: format!("no answer within {:?}", self.timeout),
                })
            })
    }

    /// Where to send the browser to sign in at the upstream.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, oidc::Error> {
        let metadata = self.bounded(self.rp.metadata()).await?;
        let challenge = tessera_core::pkce::s256_challenge(verifier);
        let request = AuthorizationRequest {
            client_id: &self.rp.client().id,
            redirect_uri,
            scope: &self.scope,
            state,
            nonce,
            code_challenge: &challenge,
        };
        Ok(request.url(&metadata.authorization_endpoint)?.to_string())
    }

    /// Redeems the code the browser came back with and verifies the id_token (signature, iss,
    /// aud, exp, and the login's nonce).
    pub async fn finish_login(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
        mapping: &GroupMapping,
    ) -> Result<Upstream, oidc::Error> {
        self.bounded(async {
            let tokens = self.rp.exchange_code(code, redirect_uri, verifier).await?;
            let claims = self
                .rp
                .verify_id_token(&tokens.id_token, Expected::Nonce(nonce))
                .await?;
            Ok(Upstream {
                person: self.person(&claims, mapping),
                sub: claims.sub,
                refresh_token: tokens.refresh_token,
            })
        })
        .await
    }

    /// Redeems the upstream refresh token of the person whose upstream subject is
    /// `upstream_sub`: the upstream still vouches for them, or answers `invalid_grant`
    /// ([`oidc::Error::InvalidGrant`]). The person as the new id_token says, when the upstream
    /// sent one (it must name the same subject), and the next refresh token, when it rotated.
    pub async fn recheck(
        &self,
        refresh_token: &str,
        upstream_sub: &str,
        mapping: &GroupMapping,
    ) -> Result<(Option<Person>, Option<String>), oidc::Error> {
        // Bounded like a login, with a cost: an upstream that rotated the token but answered
        // too late leaves tessera with the spent one, and the session ends at the next check.
        self.bounded(async {
            let renewed = self.rp.renew(refresh_token).await?;
            let person = match &renewed.id_token {
                Some(id_token) => {
                    let expected = Expected::Subject(upstream_sub);
                    let claims = self.rp.verify_id_token(id_token, expected).await?;
                    Some(self.person(&claims, mapping))
                }
                None => None,
            };
            Ok((person, renewed.refresh_token))
        })
        .await
    }

    /// The person a verified id_token names, with its claims mapped per `claims:`.
    fn person(&self, claims: &IdClaims, mapping: &GroupMapping) -> Person {
        person(&self.connector_id, &self.claims, claims, mapping)
    }
}

/// The person a verified id_token of connector `connector_id` names, with its claims mapped per
/// `names`.
fn person(
    connector_id: &str,
    names: &ClaimNames,
    claims: &IdClaims,
    mapping: &GroupMapping,
) -> Person {
    let text = |name: &str| claim(claims, name).and_then(|v| v.as_str().map(str::to_owned));
    let upstream_groups: Vec<String> = match claim(claims, &names.groups) {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(one)) => vec![one],
        _ => Vec::new(),
    };
    Person {
        subject: subject_for(connector_id, claims.sub.as_bytes(), false),
        identity: Identity {
            // Without the configured claim, the upstream's subject is the only name there is.
            username: text(&names.username).unwrap_or_else(|| claims.sub.clone()),
            name: text(&names.name),
            email: text(&names.email),
            groups: groups::map(&upstream_groups, mapping),
        },
    }
}

/// The claim `name` of a verified id_token.
fn claim(claims: &IdClaims, name: &str) -> Option<Value> {
    match name {
        "sub" => Some(Value::String(claims.sub.clone())),
        "preferred_username" => claims.preferred_username.clone().map(Value::String),
        _ => claims.other.get(name).cloned(),
    }
}

/// The client secret from its file: private to tessera's user, one line, not empty.
fn read_secret(path: &Path) -> Result<String, String> {
    crate::file_mode::require_private(&[path]).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "client_secret_file: cannot read {}: {e}; write the client secret the upstream \
             gave tessera there",
            path.display()
        )
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!(
            "client_secret_file: {} is empty; write the client secret the upstream gave \
             tessera there",
            path.display()
        ));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn claims(json: Value) -> IdClaims {
        serde_json::from_value(json).unwrap()
    }

    fn default_names() -> ClaimNames {
        ClaimNames {
            username: "preferred_username".into(),
            email: "email".into(),
            groups: "groups".into(),
            name: "name".into(),
        }
    }

    #[test]
    fn claims_are_mapped_and_the_subject_names_the_connector() {
        let person = person(
            "okta",
            &default_names(),
            &claims(serde_json::json!({
                "sub": "00u1", "iat": 1, "exp": 2, "preferred_username": "alice",
                "email": "alice@corp.example", "name": "Alice", "groups": ["k8s-dev", 7, "staff"],
            })),
            &GroupMapping::default(),
        );
        assert_eq!(person.subject.as_str(), "okta:00u1");
        assert_eq!(person.identity.username, "alice");
        assert_eq!(person.identity.email.as_deref(), Some("alice@corp.example"));
        assert_eq!(person.identity.name.as_deref(), Some("Alice"));
        assert_eq!(person.identity.groups, vec!["k8s-dev", "staff"]);
    }

    #[test]
    fn other_claim_names_are_read_and_a_missing_username_is_the_subject() {
        let names = ClaimNames {
            username: "upn".into(),
            email: "mail".into(),
            groups: "roles".into(),
            name: "display".into(),
        };
        let person = person(
            "okta",
            &names,
            &claims(serde_json::json!({"sub": "u", "iat": 1, "exp": 2, "roles": "admins"})),
            &GroupMapping::default(),
        );
        assert_eq!(person.identity.username, "u");
        assert_eq!(person.identity.groups, vec!["admins"]);
    }
}
