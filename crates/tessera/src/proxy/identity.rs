//! Who the user is, as headers: what the upstream (or nginx) is told, what a client may never
//! claim itself, and the group check.

use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue};

use super::provider::Identity;
use super::session::SessionState;

/// Headers a client could use to pretend to be someone: never passed on from the client.
const IDENTITY_HEADERS: [&str; 6] = [
    "authorization",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];

/// The headers that tell the upstream (or nginx) who the user is: oauth2-proxy's
/// `X-Auth-Request-*`, and with `bearer` the id_token as `Authorization`.
pub(super) fn identity_headers(state: &SessionState, bearer: bool) -> HeaderMap {
    let identity = &state.grant.identity;
    let groups = identity.groups.join(",");
    let values = [
        ("x-auth-request-user", Some(identity.sub.as_str())),
        ("x-auth-request-email", identity.email.as_deref()),
        (
            "x-auth-request-groups",
            Some(groups.as_str()).filter(|g| !g.is_empty()),
        ),
        (
            "x-auth-request-preferred-username",
            identity.preferred_username.as_deref(),
        ),
    ];
    let mut headers = HeaderMap::with_capacity(values.len() + 1);
    for (name, value) in values {
        // Claims are UTF-8; a value with control characters is left out rather than mangled.
        if let Some(Ok(value)) = value.map(|v| HeaderValue::from_bytes(v.as_bytes())) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if bearer && let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", state.grant.id_token))
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

/// Removes every header by which a client could claim an identity.
pub(super) fn strip_identity(headers: &mut HeaderMap) {
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-auth-request-"))
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
