//! Who is asking and how they reached the proxy, for every handler: the client's address (for
//! the provider's audit log and `X-Real-IP`), and the scheme, host and `X-Forwarded-For` chain
//! to pass on. Forwarded headers are believed only from `http.trusted_proxies`, and then only
//! the hop the trusted proxy added (the last value), not what its client sent before it.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{self, HeaderName};
use axum::http::request::Parts;

use super::forward::{Origin, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use super::{Proxy, redirect};
use crate::app::RequestContext;

/// The client end of a connection, its address written out once: every request on the
/// connection needs it as text (`X-Forwarded-For`, the provider's audit log).
#[derive(Clone, Debug)]
pub(super) struct Peer {
    ip: IpAddr,
    text: Arc<str>,
}

impl Peer {
    pub(super) fn new(ip: IpAddr) -> Peer {
        Peer {
            ip,
            text: ip.to_string().into(),
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
        let unknown;
        let peer = match parts.extensions.get::<ConnectInfo<Peer>>() {
            Some(ConnectInfo(peer)) => peer,
            None => {
                unknown = Peer::new(IpAddr::from([127, 0, 0, 1]));
                &unknown
            }
        };
        let peer_text = peer.text.as_ref();
        let peer = peer.ip;
        let headers = &parts.headers;
        let via_trusted_proxy = proxy.trusted_proxies.iter().any(|n| n.contains(&peer));
        // A trusted proxy appends to what its client sent: the last value is the proxy's own.
        let nearest = |name: &HeaderName| {
            let last = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            let hop = last.rsplit(',').next()?.trim();
            (via_trusted_proxy && !hop.is_empty()).then_some(hop)
        };
        // An absolute-form target's authority (or HTTP/2's `:authority`) outranks `Host`
        // (RFC 9112 §3.2.2).
        let host = nearest(&X_FORWARDED_HOST)
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .or_else(|| headers.get(header::HOST)?.to_str().ok())
            .map(|host| normal_host(host.trim()))
            .unwrap_or_default();
        let proto = match nearest(&X_FORWARDED_PROTO) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(chain) if via_trusted_proxy => format!("{chain}, {peer_text}"),
            _ => peer_text.to_owned(),
        };
        let ip = match crate::web::requester::client_ip(peer, headers, &proxy.trusted_proxies) {
            ip if ip == peer => peer_text.to_owned(),
            ip => ip.to_string(),
        };
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(Caller {
            origin: Origin {
                forwarded_for,
                real_ip: ip.clone(),
                proto: proto.to_owned(),
                host,
                via_trusted_proxy,
            },
            ctx: RequestContext { ip, user_agent },
        })
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
mod tests {
    use super::*;

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
