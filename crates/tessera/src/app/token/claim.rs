//! The claims of the tokens tessera signs, built as values: the id_token (OpenID Connect Core
//! §2, DESIGN.md "Tokens and lifetimes"), the access token (RFC 9068 §2.2) and the user's claims
//! a scope releases (OpenID Connect Core §5.4), which `/userinfo` answers too. Pure: the clock's
//! reading and the token id come in as arguments; signing is the caller's.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tessera_core::clock::UnixMillis;
use tessera_store::Session;

use crate::connector::Identity;

/// One issuance of tokens: who issues them, for which session and scope, and when.
#[derive(Clone, Copy, Debug)]
pub(super) struct Issuance<'a> {
    /// The issuer URL.
    pub(super) issuer: &'a str,
    /// The session the tokens belong to (`sid`).
    pub(super) session: &'a Session,
    /// The scope granted to these tokens: the session's, or a narrower one asked at refresh.
    pub(super) scope: &'a str,
    /// The time of issue.
    pub(super) now: UnixMillis,
}

impl Issuance<'_> {
    /// The id_token's claims, valid for `ttl`. `nonce` is the authorization request's, echoed
    /// on the code exchange only (DESIGN.md: `nonce (code exchange only)`).
    pub(super) fn id_token(
        &self,
        identity: &Identity,
        nonce: Option<&str>,
        ttl: Duration,
    ) -> Map<String, Value> {
        let session = self.session;
        let mut id = user_claims(identity, self.scope);
        id.insert("iss".into(), json!(self.issuer));
        id.insert("sub".into(), json!(session.subject));
        id.insert("aud".into(), json!(session.client_id));
        id.insert("azp".into(), json!(session.client_id));
        id.insert("exp".into(), json!(self.now.plus(ttl).as_secs()));
        id.insert("iat".into(), json!(self.now.as_secs()));
        id.insert("auth_time".into(), json!(session.auth_time.as_secs()));
        id.insert("sid".into(), json!(session.id));
        if let Some(nonce) = nonce {
            id.insert("nonce".into(), json!(nonce));
        }
        id
    }

    /// The access token's claims, valid for `ttl`, with the token id `jti`.
    pub(super) fn access_token(&self, ttl: Duration, jti: &str) -> Value {
        let session = self.session;
        json!({
            "iss": self.issuer,
            "sub": session.subject,
            "aud": session.client_id,
            "client_id": session.client_id,
            "exp": self.now.plus(ttl).as_secs(),
            "iat": self.now.as_secs(),
            "auth_time": session.auth_time.as_secs(),
            "jti": jti,
            "sid": session.id,
            "scope": self.scope,
        })
    }
}

/// The person's claims that the granted scope releases (OpenID Connect Core §5.4).
pub(crate) fn user_claims(identity: &Identity, scope: &str) -> Map<String, Value> {
    let mut claims = Map::new();
    let has = |s: &str| scope.split(' ').any(|g| g == s);
    if has("profile") {
        claims.insert("preferred_username".into(), json!(identity.username));
        let name = identity.name.as_ref().unwrap_or(&identity.username);
        claims.insert("name".into(), json!(name));
    }
    if let Some(email) = identity.email.as_ref().filter(|_| has("email")) {
        claims.insert("email".into(), json!(email));
        // Addresses come from the administrator's users file or the company's directory,
        // never from the person themselves.
        claims.insert("email_verified".into(), json!(true));
    }
    if has("groups") {
        claims.insert("groups".into(), json!(identity.groups));
    }
    claims
}

#[cfg(test)]
mod tests {
    use tessera_core::id::{ClientId, SessionId, Subject};

    use super::*;

    fn user(email: Option<&str>) -> Identity {
        Identity {
            username: "dev".into(),
            name: None,
            email: email.map(str::to_owned),
            groups: vec!["dev".into(), "ops".into()],
        }
    }

    fn session() -> Session {
        Session {
            id: SessionId::new("s1"),
            subject: Subject::new("dev"),
            client_id: ClientId::new("kubernetes"),
            sso_id: None,
            scope: "openid profile email groups".into(),
            auth_time: UnixMillis(1_000_500),
            created_at: UnixMillis(1_100_000),
            absolute_end: UnixMillis(9_000_000),
            revoked_at: None,
        }
    }

    fn keys(claims: &Map<String, Value>) -> Vec<&str> {
        claims.keys().map(String::as_str).collect()
    }

    #[test]
    fn the_scope_releases_the_users_claims_group_by_group() {
        let table: [(&str, Option<&str>, &[&str]); 6] = [
            ("openid", Some("dev@example.com"), &[]),
            ("openid profile", None, &["name", "preferred_username"]),
            (
                "openid email",
                Some("dev@example.com"),
                &["email", "email_verified"],
            ),
            ("openid email", None, &[]),
            ("openid groups", None, &["groups"]),
            ("openid profiles emails", Some("dev@example.com"), &[]),
        ];
        for (scope, email, expected) in table {
            assert_eq!(keys(&user_claims(&user(email), scope)), expected, "{scope}");
        }
        let all = user_claims(&user(Some("dev@example.com")), "groups email profile");
        assert_eq!(all["preferred_username"], "dev");
        assert_eq!(all["name"], "dev");
        assert_eq!(all["email"], "dev@example.com");
        assert_eq!(all["email_verified"], true);
        assert_eq!(all["groups"], json!(["dev", "ops"]));
    }

    #[test]
    fn an_id_token_names_the_session_client_and_times_and_echoes_the_nonce_when_given() {
        let session = session();
        let issuance = Issuance {
            issuer: "https://tessera.test",
            session: &session,
            scope: "openid groups",
            now: UnixMillis(2_000_999),
        };
        let user = user(Some("dev@example.com"));
        let id = issuance.id_token(&user, Some("n-0S6"), Duration::from_secs(60));
        assert_eq!(
            Value::Object(id),
            json!({
                "iss": "https://tessera.test", "sub": "dev", "aud": "kubernetes",
                "azp": "kubernetes", "exp": 2_060, "iat": 2_000, "auth_time": 1_000,
                "sid": "s1", "nonce": "n-0S6", "groups": ["dev", "ops"],
            })
        );
        let refreshed = issuance.id_token(&user, None, Duration::from_secs(60));
        assert!(!refreshed.contains_key("nonce"));
    }

    #[test]
    fn an_access_token_carries_the_narrowed_scope_and_its_own_id() {
        let session = session();
        let issuance = Issuance {
            issuer: "https://tessera.test",
            session: &session,
            scope: "openid",
            now: UnixMillis(2_000_000),
        };
        assert_eq!(
            issuance.access_token(Duration::from_secs(300), "abc"),
            json!({
                "iss": "https://tessera.test", "sub": "dev", "aud": "kubernetes",
                "client_id": "kubernetes", "exp": 2_300, "iat": 2_000, "auth_time": 1_000,
                "jti": "abc", "sid": "s1", "scope": "openid",
            })
        );
    }
}
