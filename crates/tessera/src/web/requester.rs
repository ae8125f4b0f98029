//! Who sent a request, as the audit log records it for both wings: the client's address, read
//! through `X-Forwarded-For` only from `http.trusted_proxies`, and its user agent.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

/// Most characters of a `User-Agent` kept: enough to tell tools apart, not a way to bloat the
/// audit log.
const USER_AGENT_CHARS: usize = 256;

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` that is not one of ours. Each proxy appends the address it saw,
/// so the list is read from the right, and nothing left of an untrusted hop is believed (a client
/// can write anything there).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The request's `User-Agent`, cut to its first 256 characters.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(USER_AGENT_CHARS).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let spoof = forwarded(&["203.0.113.9"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.1"), &spoof, &trusted),
            ip("198.51.100.1")
        );
        // Behind one trusted proxy: the address it saw.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &spoof, &trusted),
            ip("203.0.113.9")
        );
        // A client that writes its own header gets no further than the last untrusted hop.
        let chain = forwarded(&["1.2.3.4, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &chain, &trusted),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the last address believed.
        let garbage = forwarded(&["203.0.113.9, not-an-ip"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &garbage, &trusted),
            ip("10.0.0.5")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_user_agent_is_cut_to_256_characters() {
        let mut headers = HeaderMap::new();
        assert_eq!(user_agent(&headers), None);
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_str(&"é".repeat(300)).unwrap(),
        );
        assert_eq!(user_agent(&headers), None, "not visible ASCII: not text");
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_str(&"k".repeat(300)).unwrap(),
        );
        assert_eq!(user_agent(&headers).unwrap(), "k".repeat(256));
    }
}
