//! Who the user is, as headers: what the upstream (or nginx) is told, what a client may never
//! claim itself, and the group check.
//!
//! A client's header is judged by its name with `_` read as `-`: WSGI, PHP, CGI and others
//! hand `X_Auth_Request_User` and `X-Auth-Request-User` to the application as one variable
//! (oauth2-proxy's CVE-2025-64484). Only the spellings that collide with a header the proxy
//! decides are dropped; other names with underscores pass, as they did.

use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::forward::is_hop_by_hop;

/// The claims of an id_token the proxy passes on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// Subject.
    pub sub: String,
    /// Login name.
    #[serde(default)]
    pub preferred_username: Option<String>,
    /// E-mail.
    #[serde(default)]
    pub email: Option<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Expiry of the id_token, seconds since the epoch.
    pub exp: i64,
    /// The provider's session (`sid`), when it names one.
    #[serde(default)]
    pub sid: Option<String>,
}

/// What a client's header would tell the upstream, when it is something only the proxy may
/// say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// Who the user is: never from the client (tessera sets its own).
    Identity,
    /// Which path to serve instead of the request's (IIS, Symfony, Laminas): never from the
    /// client, since the routes checked the request's own path.
    Target,
    /// Where the request came from, beyond what tessera sets itself: from trusted proxies
    /// only.
    Origin,
    /// What tessera sets itself (`X-Forwarded-For/-Proto/-Host`, `X-Real-IP`) or drops
    /// (hop-by-hop headers) whoever sent it.
    Proxy,
}

/// What header `name` (in lower case, with `-` between words) claims, if anything.
fn claim(name: &str) -> Option<Claim> {
    let claim = match name {
        "authorization"
        | "x-forwarded-user"
        | "x-forwarded-email"
        | "x-forwarded-groups"
        | "x-forwarded-preferred-username"
        | "x-forwarded-access-token" => Claim::Identity,
        _ if name.starts_with("x-auth-request-") => Claim::Identity,
        "x-original-url" | "x-rewrite-url" | "x-original-uri" => Claim::Target,
        "forwarded"
        | "x-forwarded-port"
        | "x-forwarded-prefix"
        | "x-forwarded-server"
        | "x-forwarded-ssl"
        | "x-forwarded-scheme"
        | "x-forwarded-uri"
        | "x-client-ip"
        | "true-client-ip"
        | "x-cluster-client-ip" => Claim::Origin,
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-real-ip" => Claim::Proxy,
        _ if is_hop_by_hop(name) => Claim::Proxy,
        _ => return None,
    };
    Some(claim)
}

/// Whether a client's header `name` may reach the upstream as the client sent it (tessera
/// still replaces the [`Claim::Proxy`] ones).
fn passes(name: &HeaderName, via_trusted_proxy: bool) -> bool {
    let name = name.as_str();
    if name.contains('_') {
        return claim(&name.replace('_', "-")).is_none();
    }
    match claim(name) {
        Some(Claim::Identity | Claim::Target) => false,
        Some(Claim::Origin) => via_trusted_proxy,
        Some(Claim::Proxy) | None => true,
    }
}

const X_AUTH_REQUEST_USER: HeaderName = HeaderName::from_static("x-auth-request-user");
const X_AUTH_REQUEST_EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
const X_AUTH_REQUEST_GROUPS: HeaderName = HeaderName::from_static("x-auth-request-groups");
const X_AUTH_REQUEST_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-auth-request-preferred-username");

/// The headers that tell the upstream (or nginx) who the user is: oauth2-proxy's
/// `X-Auth-Request-*`, then the id_token as `Authorization`. Made once per grant, not per
/// request.
#[derive(Clone, Debug)]
pub(crate) struct UserHeaders {
    entries: Vec<(HeaderName, HeaderValue)>,
    /// Whether the last entry is `Authorization`.
    has_bearer: bool,
}

impl UserHeaders {
    pub(crate) fn new(identity: &Identity, id_token: &str) -> UserHeaders {
        let groups = identity.groups.join(",");
        let values = [
            (X_AUTH_REQUEST_USER, Some(identity.sub.as_str())),
            (X_AUTH_REQUEST_EMAIL, identity.email.as_deref()),
            (
                X_AUTH_REQUEST_GROUPS,
                Some(groups.as_str()).filter(|g| !g.is_empty()),
            ),
            (
                X_AUTH_REQUEST_PREFERRED_USERNAME,
                identity.preferred_username.as_deref(),
            ),
        ];
        let mut entries = Vec::with_capacity(values.len() + 1);
        for (name, value) in values {
            // Claims are UTF-8; a value with control characters is left out rather than mangled.
            if let Some(Ok(value)) = value.map(|v| HeaderValue::from_bytes(v.as_bytes())) {
                entries.push((name, value));
            }
        }
        // Sensitive: its Debug shows no token, and HTTP/2 never indexes it (RFC 7541 §7.1.3).
        let bearer = HeaderValue::from_str(&format!("Bearer {id_token}"))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        let has_bearer = bearer.is_some();
        entries.extend(bearer.map(|value| (header::AUTHORIZATION, value)));
        UserHeaders {
            entries,
            has_bearer,
        }
    }

    /// The headers to send, with `Authorization` when `bearer`.
    pub(crate) fn get(&self, bearer: bool) -> &[(HeaderName, HeaderValue)] {
        match self.entries.split_last() {
            Some((_, without_bearer)) if self.has_bearer && !bearer => without_bearer,
            _ => &self.entries,
        }
    }
}

/// Removes every header by which a client could claim an identity, a path other than the
/// request's, or (unless it is a trusted proxy) where the request came from, in any spelling;
/// one pass over the headers (most requests carry none of them).
pub(super) fn strip_claims(headers: &mut HeaderMap, via_trusted_proxy: bool) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| !passes(n, via_trusted_proxy))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Whether the user is in one of `allowed` (an empty list allows everyone signed in).
pub(super) fn in_groups(identity: &Identity, allowed: &[String]) -> bool {
    allowed.is_empty() || identity.groups.iter().any(|g| allowed.contains(g))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn passing(names: &[&str], via_trusted_proxy: bool) -> Vec<String> {
        names
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .filter(|n| passes(n, via_trusted_proxy))
            .map(|n| n.as_str().to_owned())
            .collect()
    }

    #[test]
    fn identity_and_target_headers_never_pass_in_any_spelling() {
        let names = [
            "Authorization",
            "X-Forwarded-User",
            "X_Forwarded_User",
            "x_forwarded_user",
            "X-Forwarded_Email",
            "X_FORWARDED_GROUPS",
            "X_Forwarded_Preferred_Username",
            "X_Forwarded_Access_Token",
            "X-Auth-Request-User",
            "X_Auth_Request_User",
            "X_AUTH_REQUEST_GROUPS",
            "X_Auth-Request_Email",
            "x_auth_request_anything",
            "X-Original-URL",
            "X_Original_URL",
            "X-Rewrite-URL",
            "X_Rewrite_Url",
            "X-Original-URI",
        ];
        assert_eq!(passing(&names, false), Vec::<String>::new());
        assert_eq!(passing(&names, true), Vec::<String>::new());
    }

    #[test]
    fn origin_headers_pass_only_from_trusted_proxies_and_only_spelled_with_dashes() {
        let names = [
            "Forwarded",
            "X-Forwarded-Port",
            "X-Forwarded-Prefix",
            "X-Client-IP",
            "True-Client-IP",
            "X_Forwarded_Prefix",
            "X_Forwarded_Port",
            "True_Client_IP",
        ];
        assert_eq!(passing(&names, false), Vec::<String>::new());
        assert_eq!(
            passing(&names, true),
            [
                "forwarded",
                "x-forwarded-port",
                "x-forwarded-prefix",
                "x-client-ip",
                "true-client-ip"
            ]
        );
    }

    #[test]
    fn headers_the_proxy_sets_or_drops_pass_here_only_spelled_with_dashes() {
        let names = [
            "X-Forwarded-For",
            "X-Real-IP",
            "Transfer-Encoding",
            "X_Forwarded_For",
            "X_Forwarded_Host",
            "X_Forwarded_Proto",
            "X_Real_IP",
            "Transfer_Encoding",
            "Proxy_Authorization",
        ];
        assert_eq!(
            passing(&names, false),
            ["x-forwarded-for", "x-real-ip", "transfer-encoding"]
        );
    }

    #[test]
    fn other_headers_pass_with_or_without_underscores() {
        let names = [
            "Accept",
            "X-Request-Id",
            "X_Api_Key",
            "my_header",
            "X-Forwarded",
        ];
        assert_eq!(passing(&names, false).len(), names.len());
    }
}
