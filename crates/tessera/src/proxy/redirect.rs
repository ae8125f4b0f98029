//! Where the proxy may send a browser after login or sign-out (`rd`): a path on the same host,
//! or a URL on a configured host. Anything else is refused, so the proxy is no open redirect.
//! The same hosts are the origins a sign-out may be posted from.

/// Longest `rd` followed, in bytes. It travels in the login-state cookie, which must stay
/// below browsers' 4 kB; real pages' URLs are far shorter. A longer one is replaced by `/`.
pub(crate) const MAX_RD_LEN: usize = 2048;

/// Hosts `rd` may name: the routes' hosts, the callback's host, `allowed_redirect_hosts` (a
/// leading dot allows every subdomain) and the host the request came to.
#[derive(Clone, Debug, Default)]
pub(crate) struct RedirectPolicy {
    hosts: Vec<String>,
}

impl RedirectPolicy {
    /// A policy over these hosts (lower case, without port).
    pub(crate) fn new(hosts: Vec<String>) -> RedirectPolicy {
        RedirectPolicy { hosts }
    }

    /// Where to send the browser: `rd` when it is safe from a request to `request_host`, else
    /// `/`.
    pub(crate) fn target(&self, rd: Option<&str>, request_host: &str) -> String {
        rd.and_then(|rd| self.check(rd, request_host))
            .unwrap_or("/")
            .to_owned()
    }

    /// Whether a request's `Origin` (RFC 6454 §7: `scheme://host[:port]`) is the proxy's
    /// own host or one `rd` may name; `null` and anything else are foreign.
    pub(crate) fn allows_origin(&self, origin: &str, request_host: &str) -> bool {
        !origin.starts_with('/') && self.check(origin, request_host).is_some()
    }

    /// `rd` itself when it is safe to redirect to from a request to `request_host`, else
    /// `None`.
    fn check<'a>(&self, rd: &'a str, request_host: &str) -> Option<&'a str> {
        if rd.len() > MAX_RD_LEN || rd.chars().any(|c| c.is_control() || c == '\\') {
            return None;
        }
        if rd.starts_with('/') {
            // `//evil.example` and `/\evil.example` are other hosts to a browser.
            return (!rd.starts_with("//")).then_some(rd);
        }
        let url = url::Url::parse(rd).ok()?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        let request_host = without_port(request_host).to_ascii_lowercase();
        let allowed = host == request_host
            || self.hosts.iter().any(|h| match h.strip_prefix('.') {
                Some(domain) => host == domain || host.ends_with(h.as_str()),
                None => host == *h,
            });
        allowed.then_some(rd)
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
pub(crate) fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy::new(vec![
            "dashboard.example.com".into(),
            ".apps.example.com".into(),
        ])
    }

    #[test]
    fn paths_and_configured_hosts_pass() {
        let p = policy();
        for ok in [
            "/",
            "/pods?namespace=a",
            "https://dashboard.example.com/x",
            "https://grafana.apps.example.com/",
            "http://proxy.local:4180/y",
        ] {
            assert_eq!(p.check(ok, "proxy.local:4180"), Some(ok), "{ok}");
        }
    }

    #[test]
    fn other_hosts_and_tricks_are_refused() {
        let p = policy();
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "https://dashboard.example.com.evil.example/",
            "https://evilapps.example.com/",
            "javascript:alert(1)",
            "https://user@dashboard.example.com/",
            "/a\nb",
        ] {
            assert_eq!(p.check(bad, "proxy.local"), None, "{bad}");
        }
    }

    #[test]
    fn an_rd_longer_than_the_cap_goes_home() {
        let p = policy();
        let long = format!("/{}", "a".repeat(MAX_RD_LEN));
        assert_eq!(p.target(Some(&long), "proxy.local"), "/");
        let fits = format!("/{}", "a".repeat(MAX_RD_LEN - 1));
        assert_eq!(p.target(Some(&fits), "proxy.local"), fits);
    }

    #[test]
    fn origins_are_the_proxys_host_or_an_allowed_one() {
        let p = policy();
        for ok in [
            "https://proxy.local",
            "http://proxy.local:4180",
            "https://dashboard.example.com",
            "https://grafana.apps.example.com",
        ] {
            assert!(p.allows_origin(ok, "proxy.local:4180"), "{ok}");
        }
        for bad in [
            "null",
            "https://evil.example",
            "/",
            "",
            "https://proxy.local.evil.example",
        ] {
            assert!(!p.allows_origin(bad, "proxy.local:4180"), "{bad}");
        }
    }

    #[test]
    fn ports_are_not_part_of_the_host() {
        assert_eq!(without_port("a.example:8080"), "a.example");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
