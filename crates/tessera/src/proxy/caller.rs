//! Who is asking and how they reached the proxy, for every handler: the client's address (for
//! the provider's audit log and `X-Real-IP`), and the scheme, host and `X-Forwarded-For` chain
//! to pass on. Forwarded headers are believed only from `http.trusted_proxies`, and then only
//! the hop the trusted proxy added (the last value), not what its client sent before it.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{self, HeaderName};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};

use super::forward::{Origin, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use super::{Proxy, redirect};
use crate::app::RequestContext;
use crate::web::requester::{client_ip, user_agent};

/// The client end of a connection, its address written out once: every request on the
/// connection needs it as text (`X-Forwarded-For`, the provider's audit log).
#[derive(Clone, Debug)]
pub(super) struct Peer {
    ip: IpAddr,
    text: Arc<str>,
}

impl Peer {
    /// The peer at `ip`.
    pub(super) fn new(ip: IpAddr) -> Peer {
        Peer {
            ip,
            text: ip.to_string().into(),
        }
    }

    /// The peer of the request's connection (loopback for a request that came by no
    /// connection, as in-process).
    fn of(parts: &Parts) -> Peer {
        match parts.extensions.get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(peer)) => peer.clone(),
            None => Peer::new(IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// The client's address as text (see [`client_ip`]): the peer's own text when no trusted
    /// proxy speaks for another client.
    fn client(&self, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> String {
        match client_ip(self.ip, headers, trusted) {
            ip if ip == self.ip => self.text.as_ref().to_owned(),
            ip => ip.to_string(),
        }
    }
}

/// Who is asking and how they reached the proxy: forwarded headers are believed only from
/// `http.trusted_proxies`.
pub(super) struct Caller {
    /// How the client reached the proxy.
    pub(super) origin: Origin,
    /// Who the client is, for the provider.
    pub(super) ctx: RequestContext,
}

impl FromRequestParts<Arc<Proxy>> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        proxy: &Arc<Proxy>,
    ) -> Result<Caller, Self::Rejection> {
        let peer = Peer::of(parts);
        let headers = &parts.headers;
        let forwarded = Forwarded {
            headers,
            believed: proxy.trusted_proxies.iter().any(|n| n.contains(&peer.ip)),
        };
        let ip = peer.client(headers, &proxy.trusted_proxies);
        Ok(Caller {
            origin: Origin {
                forwarded_for: forwarded.chain(&peer),
                real_ip: ip.clone(),
                proto: forwarded.proto().to_owned(),
                host: forwarded.host(&parts.uri),
                via_trusted_proxy: forwarded.believed,
            },
            ctx: RequestContext {
                ip,
                user_agent: user_agent(headers),
            },
        })
    }
}

/// What the request's headers say about how the client reached the proxy, believed only when
/// the peer is a trusted proxy.
struct Forwarded<'r> {
    headers: &'r HeaderMap,
    /// Whether the peer is one of `http.trusted_proxies`.
    believed: bool,
}

impl Forwarded<'_> {
    /// The host the client asked for, normal: a trusted proxy's `X-Forwarded-Host`, else an
    /// absolute-form target's authority (or HTTP/2's `:authority`), which outranks `Host`
    /// (RFC 9112 §3.2.2).
    fn host(&self, uri: &Uri) -> String {
        self.nearest(&X_FORWARDED_HOST)
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .or_else(|| self.headers.get(header::HOST)?.to_str().ok())
            .map(|host| normal_host(host.trim()))
            .unwrap_or_default()
    }

    /// `https` when a trusted proxy says so, else `http`.
    fn proto(&self) -> &'static str {
        match self.nearest(&X_FORWARDED_PROTO) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        }
    }

    /// The `X-Forwarded-For` chain to pass on: a trusted proxy's chain with the peer added,
    /// else the peer alone.
    fn chain(&self, peer: &Peer) -> String {
        let sent = self
            .headers
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok());
        match sent {
            Some(chain) if self.believed => format!("{chain}, {}", peer.text),
            _ => peer.text.as_ref().to_owned(),
        }
    }

    /// The hop a trusted proxy added to header `name`: it appends to what its client sent,
    /// so the last value is its own.
    fn nearest(&self, name: &HeaderName) -> Option<&str> {
        let last = self
            .headers
            .get_all(name)
            .iter()
            .next_back()?
            .to_str()
            .ok()?;
        let hop = last.rsplit(',').next()?.trim();
        (self.believed && !hop.is_empty()).then_some(hop)
    }
}

/// `host` as routes match it: in lower case, without the trailing dot of an absolute domain
/// name (`Admin.Example.:8080` is `admin.example:8080`).
fn normal_host(host: &str) -> String {
    let name = redirect::without_port(host);
    let port = &host[name.len()..];
    let mut normal = name.trim_end_matches('.').to_ascii_lowercase();
    normal.push_str(port);
    normal
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn forwarded_headers_count_only_from_a_trusted_proxy_and_only_its_own_hop() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("Proxy.Local:4180"));
        headers.append(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        headers.append(
            &X_FORWARDED_HOST,
            HeaderValue::from_static("spoof, App.Example."),
        );
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("HTTPS"));
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        let peer = Peer::new(IpAddr::from([10, 0, 0, 5]));
        let uri = Uri::from_static("/x");
        let trusted = Forwarded {
            headers: &headers,
            believed: true,
        };
        assert_eq!(trusted.host(&uri), "app.example");
        assert_eq!(trusted.proto(), "https");
        assert_eq!(trusted.chain(&peer), "203.0.113.9, 10.0.0.5");
        let untrusted = Forwarded {
            headers: &headers,
            believed: false,
        };
        assert_eq!(untrusted.host(&uri), "proxy.local:4180");
        assert_eq!(untrusted.proto(), "http");
        assert_eq!(untrusted.chain(&peer), "10.0.0.5");
        let absolute = Uri::from_static("http://Target.Example/x");
        assert_eq!(
            untrusted.host(&absolute),
            "target.example",
            "RFC 9112 §3.2.2"
        );
    }

    #[test]
    fn hosts_are_lower_case_without_a_trailing_dot() {
        for (host, normal) in [
            ("admin.example", "admin.example"),
            ("ADMIN.Example.", "admin.example"),
            ("Admin.Example.:8080", "admin.example:8080"),
            ("127.0.0.1:4180", "127.0.0.1:4180"),
            ("[::1]:4180", "[::1]:4180"),
        ] {
            assert_eq!(normal_host(host), normal, "{host}");
        }
    }
}
