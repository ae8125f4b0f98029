//! The routes of the `proxy:` section: which requests go to which upstream, for whom.

use serde::Deserialize;

use super::{Invalid, http_url, invalid};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Host the route answers for (exact, any port); unset: every host.
    #[serde(default)]
    host: Option<String>,
    /// Path prefix the route answers for (default `/`; whole segments, in normal form, a
    /// trailing `/` ignored); the longest match wins.
    #[serde(default)]
    path_prefix: Option<String>,
    /// `http://HOST:PORT` (the request's path and query are appended unchanged).
    upstream: String,
    /// Groups of which the user must be in at least one; empty: every signed-in user.
    #[serde(default)]
    allowed_groups: Vec<String>,
    /// Send `Authorization: Bearer <id_token>` to the upstream.
    #[serde(default)]
    pass_access_token: bool,
    /// Speak HTTP/2 to the upstream without TLS (h2c with prior knowledge, e.g. for gRPC);
    /// default HTTP/1.1.
    #[serde(default)]
    upstream_http2: bool,
}

/// One route: which requests, where to, for whom.
#[derive(Clone, Debug)]
pub struct Route {
    /// Host to match (lower case, no port), or every host.
    pub host: Option<String>,
    /// Path prefix to match, in normal form (see `crate::path`), without a trailing `/`
    /// (but `/` itself).
    pub path_prefix: String,
    /// The prefix as a lenient upstream reads it (see `crate::path::lenient`).
    pub lenient_prefix: String,
    /// `scheme://authority` of the upstream.
    pub upstream: url::Url,
    /// The upstream's `host:port`, ready for each forwarded request's URI.
    pub upstream_authority: axum::http::uri::Authority,
    /// Required groups (any of).
    pub allowed_groups: Vec<String>,
    /// Whether to send the id_token as a bearer token.
    pub pass_access_token: bool,
    /// Whether the upstream speaks HTTP/2 (h2c, prior knowledge).
    pub upstream_http2: bool,
}

/// At least one route, each valid; ordered so that the first match is the best one.
pub(super) fn routes(raw: Vec<RawRoute>) -> Result<Vec<Route>, Invalid> {
    if raw.is_empty() {
        return Err(invalid("routes", "configure at least one route"));
    }
    let mut routes = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| route(r).map_err(|m| invalid(&format!("routes[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    // Longest prefix first, host-specific before catch-all: the first match is the best one.
    routes.sort_by_key(|r| (std::cmp::Reverse(r.path_prefix.len()), r.host.is_none()));
    Ok(routes)
}

fn route(raw: RawRoute) -> Result<Route, String> {
    let upstream = http_url(&raw.upstream).map_err(|m| format!("`upstream`: {m}"))?;
    if upstream.scheme() != "http" {
        return Err(format!(
            "`upstream` `{}`: only http:// upstreams are supported (TLS to upstreams is not built in yet)",
            raw.upstream
        ));
    }
    if upstream.path() != "/" || upstream.query().is_some() {
        return Err(format!(
            "`upstream` `{}` must be only scheme://host:port (the request's path is kept)",
            raw.upstream
        ));
    }
    let upstream_authority = upstream[url::Position::BeforeHost..url::Position::AfterPort]
        .parse()
        .map_err(|e| format!("`upstream` `{}`: {e}", raw.upstream))?;
    let path_prefix = raw.path_prefix.unwrap_or_else(|| "/".into());
    let (path_prefix, lenient_prefix) = prefix_forms(&path_prefix)?;
    Ok(Route {
        host: raw
            .host
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
        path_prefix,
        lenient_prefix,
        upstream,
        upstream_authority,
        allowed_groups: raw.allowed_groups,
        pass_access_token: raw.pass_access_token,
        upstream_http2: raw.upstream_http2,
    })
}

/// A route's prefix as requests are matched against it, and as a lenient upstream reads it;
/// a prefix that is not in normal form is refused, naming the form to write.
fn prefix_forms(prefix: &str) -> Result<(String, String), String> {
    let normal = crate::path::normalize(prefix)
        .map_err(|why| format!("`path_prefix` `{prefix}`: {}", why.describe()))?;
    if normal != prefix && normal.trim_end_matches('/') != prefix.trim_end_matches('/') {
        return Err(format!(
            "`path_prefix` `{prefix}` is not in normal form; write `{normal}`"
        ));
    }
    let lenient = crate::path::lenient(&normal)
        .map_err(|why| format!("`path_prefix` `{prefix}`: {}", why.describe()))?;
    let without_slash = |p: &str| match p.trim_end_matches('/') {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };
    Ok((without_slash(&normal), without_slash(&lenient)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_kept_in_normal_form_without_a_trailing_slash() {
        let forms = |p: &str| prefix_forms(p);
        assert_eq!(forms("/"), Ok(("/".into(), "/".into())));
        assert_eq!(forms("/admin/"), Ok(("/admin".into(), "/admin".into())));
        assert_eq!(forms("/Admin"), Ok(("/Admin".into(), "/admin".into())));
        assert_eq!(forms("/~a"), Ok(("/~a".into(), "/~a".into())));
        assert!(forms("admin").unwrap_err().contains("start with /"));
        assert!(forms("/a/../admin").unwrap_err().contains("write `/admin`"));
        assert!(forms("/%61dmin").unwrap_err().contains("write `/admin`"));
        assert!(forms("//admin").unwrap_err().contains("write `/admin`"));
        assert!(forms("/admin%2f").unwrap_err().contains("encoded slash"));
    }
}
