//! Who is asking and how they reached the proxy, for every handler: the client's address (for
//! the provider's audit log), and the scheme, host and `X-Forwarded-For` chain to pass on.
//! Forwarded headers are believed only from `http.trusted_proxies`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{self, HeaderName};
use axum::http::request::Parts;

use super::Proxy;
use super::forward::{Origin, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
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
        let trusted = proxy.trusted_proxies.iter().any(|n| n.contains(&peer));
        let first = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let forwarded = |name: &HeaderName| if trusted { first(name) } else { None };
        // HTTP/2 carries the host in the URI (`:authority`), HTTP/1.1 in `Host`.
        let host = forwarded(&X_FORWARDED_HOST)
            .or_else(|| first(&header::HOST))
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let proto = forwarded(&X_FORWARDED_PROTO).unwrap_or_else(|| "http".to_owned());
        let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(chain) if trusted => format!("{chain}, {peer_text}"),
            _ => peer_text.to_owned(),
        };
        let ip = match crate::http::client_ip(peer, headers, &proxy.trusted_proxies) {
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
                proto,
                host,
            },
            ctx: RequestContext { ip, user_agent },
        })
    }
}
