//! Cookies as both wings read and write them: the request's `Cookie` pairs (RFC 6265 §5.4), one
//! cookie's value, the `Cookie` header without some of its pairs, and `Set-Cookie` values with
//! tessera's strict attributes (`Secure; HttpOnly; SameSite=Lax`).

use axum::http::{HeaderMap, HeaderValue, header};

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie_pairs(headers)
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

/// Every `name=value` pair of the request's `Cookie` headers, in order (RFC 6265 §5.4: pairs
/// split at `;`, whitespace trimmed, a value in double quotes unquoted; a pair without `=` or
/// name skipped).
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    raw_pairs(headers).filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let (name, value) = (name.trim(), value.trim());
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!name.is_empty()).then_some((name, value))
    })
}

/// The request's `Cookie` header without the pairs whose name `leave_out` picks, or `None`
/// when nothing else is left. The other pairs pass on verbatim (as sent, quotes and all).
pub fn cookie_header_without(
    headers: &HeaderMap,
    leave_out: impl Fn(&str) -> bool,
) -> Option<HeaderValue> {
    let mut kept = String::new();
    for pair in raw_pairs(headers).map(str::trim).filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name).trim();
        if leave_out(name) {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept).ok()
}

/// A `Set-Cookie` value with tessera's strict defaults: `Secure; HttpOnly; SameSite=Lax`,
/// scoped to `path` (`/` when empty) and, when given, to `domain`.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    domain: Option<&str>,
    max_age_secs: i64,
) -> HeaderValue {
    let mut cookie = cookie::Cookie::build((name.to_owned(), value.to_owned()))
        .path(if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        })
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(time::Duration::seconds(max_age_secs))
        .build();
    if let Some(domain) = domain {
        cookie.set_domain(domain.to_owned());
    }
    // Cookie names and our base64url values are visible ASCII, always valid header text.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `;`-separated pieces of every `Cookie` header, untrimmed.
fn raw_pairs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn cookie_pairs_are_split_trimmed_and_unquoted() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static(" a=1;b = \"two\" ;novalue; =anonymous;c=x=y"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("d="));
        let pairs: Vec<_> = cookie_pairs(&headers).collect();
        assert_eq!(pairs, [("a", "1"), ("b", "two"), ("c", "x=y"), ("d", "")]);
        assert_eq!(cookie(&headers, "c").as_deref(), Some("x=y"));
        assert_eq!(cookie(&headers, "novalue"), None);
    }

    #[test]
    fn a_cookie_header_keeps_the_pairs_left_in_verbatim() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; drop=x;; b = \"two\" "),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("drop=y; c"));
        let kept = cookie_header_without(&headers, |name| name == "drop");
        assert_eq!(kept.unwrap(), "a=1; b = \"two\"; c");
        assert_eq!(cookie_header_without(&headers, |_| true), None);
        assert_eq!(cookie_header_without(&HeaderMap::new(), |_| false), None);
    }
}
