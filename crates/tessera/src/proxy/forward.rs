//! Forwarding a request to its upstream and the answer back: hop-by-hop headers dropped (RFC
//! 9110 §7.6.1), `Host` set to the host the route was chosen by, `X-Forwarded-For/-Proto/-Host`
//! and `X-Real-IP` set, the proxy's own cookies removed, bodies
//! streamed both ways, and protocol upgrades (websockets) joined into one tunnel. Upstreams
//! speak HTTP/1.1, or HTTP/2 without TLS when their route says so.

use axum::body::Body;
use axum::http::header::{self, HeaderName};
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::proxy::Route;

/// Whether header `name` (in lower case) describes one connection and is never forwarded (RFC
/// 9110 §7.6.1).
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where the request came from, as the upstream should be told.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    /// `X-Forwarded-For` to send: the trusted chain so far plus the client.
    pub(crate) forwarded_for: String,
    /// `X-Real-IP` to send: the nearest address that no trusted proxy claims, as nginx's
    /// `real_ip` module determines it.
    pub(crate) real_ip: String,
    /// The scheme the client used.
    pub(crate) proto: String,
    /// The host the client asked for, in normal form: routes are matched on it and the
    /// upstream receives it as `Host`.
    pub(crate) host: String,
    /// Whether the peer is in `http.trusted_proxies`: only then do its other forwarding
    /// headers (`Forwarded`, `X-Forwarded-Port`, …) reach the upstream.
    pub(crate) via_trusted_proxy: bool,
}

thread_local! {
    /// One pool per proxy thread (see `listen`): a pooled connection is driven by a task of
    /// the runtime that opened it, and a request from another thread would hop over to it.
    static UPSTREAMS: Upstreams = Upstreams::new();
}

/// Sends `request` to `route`'s upstream with `extra` headers (identity, authorization) and
/// `cookie` as its only `Cookie` header, over this thread's pooled connections; answers the
/// upstream's response.
pub(crate) async fn forward(
    route: &Route,
    mut request: Request<Body>,
    origin: &Origin,
    extra: &[(HeaderName, HeaderValue)],
    cookie: Option<HeaderValue>,
) -> Response<Body> {
    let client = UPSTREAMS.with(|u| u.client(route.upstream_http2).clone());
    let upgrade = upgrade_protocol(request.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let Ok(uri) = upstream_uri(route, request.uri()) else {
        return bad_gateway("the upstream URL cannot be built");
    };
    *request.uri_mut() = uri;
    *request.version_mut() = if route.upstream_http2 {
        axum::http::Version::HTTP_2
    } else {
        axum::http::Version::HTTP_11
    };
    let forwarding = Forwarding {
        origin,
        upgrade: upgrade.as_ref(),
        extra,
        cookie,
    };
    forwarding.apply(request.headers_mut());
    match client.request(request).await {
        Ok(response) => answer(response, client_upgrade),
        Err(e) => {
            tracing::warn!(upstream = %route.upstream, error = %e, "upstream failed");
            bad_gateway("the upstream cannot be reached")
        }
    }
}

/// What the proxy adds to a request it forwards: how the client reached it, the upgrade asked
/// for, who the user is, and the cookies the upstream may see.
struct Forwarding<'a> {
    /// Where the request came from.
    origin: &'a Origin,
    /// The protocol the client asks to upgrade to.
    upgrade: Option<&'a HeaderValue>,
    /// Who the user is (identity headers, authorization).
    extra: &'a [(HeaderName, HeaderValue)],
    /// The only `Cookie` header the upstream gets (the proxy's own removed).
    cookie: Option<HeaderValue>,
}

impl Forwarding<'_> {
    /// Turns the client's headers into the upstream's: what describes the client's connection
    /// and its cookies go, then what the proxy says is set over whatever the client said.
    fn apply(self, headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        headers.remove(header::COOKIE);
        if let Some(cookie) = self.cookie {
            headers.insert(header::COOKIE, cookie);
        }
        set_forwarded(headers, self.origin);
        if let Some(protocol) = self.upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        for (name, value) in self.extra {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The upstream's answer as the client gets it: a switched protocol joined into a tunnel
/// between the two upgraded connections, anything else without its hop-by-hop headers.
fn answer(
    mut response: Response<hyper::body::Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    strip_hop_by_hop(response.headers_mut());
    response.map(Body::new)
}

/// Pooled clients for upstreams: HTTP/1.1, and HTTP/2 without TLS for routes that ask for it.
struct Upstreams {
    http1: UpstreamClient,
    h2c: UpstreamClient,
}

type UpstreamClient = Client<HttpConnector, Body>;

impl Upstreams {
    /// A client with `TCP_NODELAY` (small answers are not held back for a delayed ACK).
    fn new() -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Upstreams {
            http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// The client for a route's upstream.
    fn client(&self, http2: bool) -> &UpstreamClient {
        if http2 { &self.h2c } else { &self.http1 }
    }
}

/// Joins the client's and the upstream's upgraded connections until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "an upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "an upgraded connection ended with an error");
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` and `Upgrade: …`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn upstream_uri(route: &Route, original: &Uri) -> Result<Uri, axum::http::Error> {
    let mut parts = axum::http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(route.upstream_authority.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).map_err(Into::into)
}

/// Removes the hop-by-hop headers and every header the `Connection` header names, in one
/// pass over the headers (most requests carry none of them).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()) || named.contains(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Sets what the proxy determined about the request, replacing whatever the client sent (an
/// empty value is left out). `Host` is the host the route was chosen by (oauth2-proxy's
/// `pass_host_header`), once: a second `Host`, or an absolute target's authority, could name
/// another.
fn set_forwarded(headers: &mut HeaderMap, origin: &Origin) {
    let pairs = [
        (header::HOST, origin.host.as_str()),
        (X_FORWARDED_FOR, origin.forwarded_for.as_str()),
        (X_REAL_IP, origin.real_ip.as_str()),
        (X_FORWARDED_PROTO, origin.proto.as_str()),
        (X_FORWARDED_HOST, origin.host.as_str()),
    ];
    for (name, value) in pairs {
        match HeaderValue::from_str(value) {
            Ok(v) if !value.is_empty() => {
                headers.insert(name, v);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
}

fn bad_gateway(description: &str) -> Response<Body> {
    let body = serde_json::json!({"error": "bad_gateway", "error_description": description});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn the_upstream_is_told_the_proxys_cookie_forwarding_and_identity_over_the_clients() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("cookie", "_tp=session; theirs=1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-auth-request-user", "admin"),
            ("accept", "text/html"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let origin = Origin {
            forwarded_for: "127.0.0.1".into(),
            real_ip: "127.0.0.1".into(),
            proto: "http".into(),
            host: "app.example".into(),
            via_trusted_proxy: false,
        };
        let user = HeaderName::from_static("x-auth-request-user");
        let websocket = HeaderValue::from_static("websocket");
        Forwarding {
            origin: &origin,
            upgrade: Some(&websocket),
            extra: &[(user, HeaderValue::from_static("dev"))],
            cookie: Some(HeaderValue::from_static("theirs=1")),
        }
        .apply(&mut headers);
        let told = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(told("cookie"), ["theirs=1"]);
        assert_eq!(told("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(told("host"), ["app.example"]);
        assert_eq!(told("x-auth-request-user"), ["dev"]);
        assert_eq!(told("connection"), ["upgrade"]);
        assert_eq!(told("upgrade"), ["websocket"]);
        assert_eq!(told("keep-alive"), Vec::<&str>::new());
        assert_eq!(told("accept"), ["text/html"]);
    }

    #[test]
    fn only_an_upgrade_named_in_connection_counts() {
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&headers), None);
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&headers).unwrap(), "websocket");
    }
}
