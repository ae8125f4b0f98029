//! Who the user is, as headers: what the upstream (or nginx) is told, what a client may never
//! claim itself, and the group check.

use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue};

use super::provider::Identity;

/// Whether a client could use header `name` to pretend to be someone: such headers are never
/// passed on from the client.
fn claims_identity(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "authorization"
            | "x-forwarded-user"
            | "x-forwarded-email"
            | "x-forwarded-groups"
            | "x-forwarded-preferred-username"
            | "x-forwarded-access-token"
    ) || name.starts_with("x-auth-request-")
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
        let bearer = HeaderValue::from_str(&format!("Bearer {id_token}")).ok();
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

/// Removes every header by which a client could claim an identity, in one pass over the
/// headers (most requests carry none of them).
pub(super) fn strip_identity(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| claims_identity(n))
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
