//! Regression tests for issue 11, items 1, 2 and 8: what a hostile client can make the proxy
//! send to its upstream. Identity headers spelled with underscores, paths that are not normal
//! (dot segments, escapes, slashes, case, path parameters), hosts that are not normal, and
//! forwarding headers. Requests go over a raw TCP stream (or a bare HTTP/2 connection) so that
//! the hostile bytes arrive as written: HTTP client libraries normalise some of them away.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::proxy::{ProxyBrowser, start_proxy};
use crate::support::Server;
use crate::upstream::Upstream;

/// An answer read off the wire.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    /// The body as the echo upstream's JSON.
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("not an echo ({e}): {} {}", self.status, self.body);
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the final blank line) over a new
/// connection to `address` and reads the whole answer.
async fn send_raw(address: &str, head: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A signed-in `dev` (groups dev, system:authenticated) speaking raw HTTP/1.1 to the proxy.
struct Hostile {
    server: Server,
    upstream: Upstream,
    /// `127.0.0.1:PORT` of the proxy.
    address: String,
    cookie: String,
}

impl Hostile {
    /// The proxy with `routes` (YAML, `UPSTREAM` standing for the echo upstream's URL), and
    /// `extra` overrides; `dev` logs in through `/`.
    async fn start(routes: &str, extra: &[(&str, &str)]) -> Hostile {
        let upstream = Upstream::start().await;
        let routes = routes.replace("UPSTREAM", &upstream.url());
        let mut env = vec![("TESSERA_PROXY__ROUTES", routes.as_str())];
        env.extend_from_slice(extra);
        let server = start_proxy(&upstream, &env).await;
        let base = server.proxy.clone().unwrap();
        let browser = ProxyBrowser::new(&server, &base);
        browser.log_in("/").await;
        let cookie = format!("_tessera_proxy={}", browser.cookies()["_tessera_proxy"]);
        let address = base.trim_start_matches("http://").to_owned();
        Hostile {
            server,
            upstream,
            address,
            cookie,
        }
    }

    /// `GET target` with the session, the proxy's own address as `Host` unless `headers`
    /// names one, and `headers` (`Name: value` lines).
    async fn get(&self, target: &str, headers: &[&str]) -> Answer {
        let mut head = format!("GET {target} HTTP/1.1\r\nCookie: {}", self.cookie);
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        {
            head.push_str(&format!("\r\nHost: {}", self.address));
        }
        for header in headers {
            head.push_str("\r\n");
            head.push_str(header);
        }
        send_raw(&self.address, &head).await
    }
}

/// The headers the echo upstream received, by name.
fn received(echo: &Value) -> BTreeMap<String, Vec<String>> {
    serde_json::from_value(echo["headers"].clone()).unwrap()
}

const ADMIN_ROUTES: &str = "[{path_prefix: /admin, upstream: 'UPSTREAM', allowed_groups: [ops]}, \
     {host: admin.example, upstream: 'UPSTREAM', allowed_groups: [ops]}, \
     {upstream: 'UPSTREAM'}]";

#[tokio::test]
async fn identity_headers_spelled_with_underscores_or_in_any_case_never_reach_the_upstream() {
    let proxy = Hostile::start(ADMIN_ROUTES, &[]).await;
    let spoofed = [
        "X_Forwarded_User: admin",
        "X_FORWARDED_EMAIL: admin@example.com",
        "x_forwarded_groups: ops",
        "X-Forwarded_Preferred_Username: admin",
        "X_Forwarded_Access_Token: forged",
        "X_Auth_Request_User: admin",
        "X_AUTH_REQUEST_EMAIL: admin@example.com",
        "X_Auth_Request_Groups: ops",
        "X_Auth-Request_Preferred_Username: admin",
        "X_Auth_Request_Access_Token: forged",
        "X-AUTH-REQUEST-USER: admin",
        "X-Forwarded-Email: admin@example.com",
    ];
    let answer = proxy.get("/echo", &spoofed).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let headers = received(&answer.echo());
    for (name, values) in &headers {
        let spelled = name.replace('_', "-");
        let identity =
            spelled.starts_with("x-auth-request-") || spelled.starts_with("x-forwarded-");
        if identity && spelled != "x-forwarded-for" && spelled != "x-forwarded-proto" {
            assert!(
                !name.contains('_'),
                "{name}: {values:?} reached the upstream"
            );
            assert!(
                !values.iter().any(|v| v.contains("admin") || v == "ops"),
                "{name}: {values:?} reached the upstream"
            );
        }
    }
    assert_eq!(headers["x-auth-request-user"], ["dev"]);
    assert!(!headers.contains_key("x-forwarded-user"));

    // nginx's auth_request copies what /oauth2/auth answers: only tessera's own values.
    let auth = proxy.get("/oauth2/auth", &spoofed).await;
    assert_eq!(auth.status, 202);
    for (name, value) in &auth.headers {
        assert!(!name.contains('_'), "{name}: {value}");
        assert!(
            !value.contains("admin") && value != "ops",
            "{name}: {value}"
        );
    }
    assert_eq!(auth.header("x-auth-request-user"), Some("dev"));
}

/// Targets that must not reach the upstream with the groups of `/` when they mean `/admin`:
/// each is refused as it stands (400) or, once normal, checked as `/admin` (403, since `dev`
/// is not in `ops`).
const ADMIN_IN_DISGUISE: &[(&str, u16)] = &[
    ("/admin", 403),
    ("/admin/", 403),
    ("/admin/x", 403),
    ("/public/../admin", 403),
    ("/public/%2e%2e/admin", 403),
    ("/public/%2E%2E/admin", 403),
    ("/public/.%2e/admin", 403),
    ("/public/./../admin/", 403),
    ("/./admin", 403),
    ("/%2e/admin", 403),
    ("/admin/.", 403),
    ("/admin/x/..", 403),
    ("//admin", 403),
    ("///admin//x", 403),
    ("/%61dmin", 403),
    ("/%61%64%6D%69%6e", 403),
    ("/admin%2f", 400),
    ("/admin%2Fx", 400),
    ("/public%2f..%2fadmin", 400),
    ("/public\\..\\admin", 400),
    ("/public%5c..%5cadmin", 400),
    ("/admin%00", 400),
    ("/admin%0a", 400),
    ("/admin%", 400),
    ("/admin%zz", 400),
    ("/admin%4", 400),
    ("/..", 400),
    ("/../admin", 400),
    ("/public/../../admin", 400),
    ("/%2e%2e/admin", 400),
    ("/%c0%ae%c0%ae/admin", 400),
    ("/ADMIN", 400),
    ("/Admin/x", 400),
    ("/admin;x", 400),
    ("/admin;/", 400),
    ("/;/admin", 400),
    ("/public/..;/admin", 400),
    ("/..;/admin", 400),
    ("/admin.", 400),
    ("/admin%20", 400),
    ("/admin%3b", 400),
];

#[tokio::test]
async fn paths_that_are_not_normal_never_reach_a_route_without_its_groups() {
    let proxy = Hostile::start(ADMIN_ROUTES, &[]).await;
    let absolute = format!("http://{}/public/../admin", proxy.address);
    let mut cases: Vec<(&str, u16)> = ADMIN_IN_DISGUISE.to_vec();
    cases.push((&absolute, 403));
    let mut wrong = Vec::new();
    for (target, expected) in cases {
        let answer = proxy.get(target, &[]).await;
        if answer.status != expected {
            wrong.push(format!("{target}: {} {}", answer.status, answer.body));
        } else if expected == 400 {
            let error: Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(error["error"], "invalid_request", "{target}");
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(proxy.upstream.served(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn the_upstream_receives_the_normal_form_the_route_was_chosen_by() {
    let proxy = Hostile::start(ADMIN_ROUTES, &[]).await;
    let forwarded = [
        ("/public/../echo?q=/../admin", "/echo?q=/../admin"),
        ("/public/%2e%2e/echo?x=%2e%2e", "/echo?x=%2e%2e"),
        ("//echo//a/", "/echo/a/"),
        ("/echo/.", "/echo/"),
        ("/%7Euser/%41%5a", "/~user/AZ"),
        ("/a%3bb/%e2%82%ac", "/a%3Bb/%E2%82%AC"),
        ("/API/Pods", "/API/Pods"),
        ("/administrator", "/administrator"),
        ("/app;jsessionid=1/x", "/app;jsessionid=1/x"),
    ];
    for (target, upstream_path) in forwarded {
        let answer = proxy.get(target, &[]).await;
        assert_eq!(answer.status, 200, "{target}: {}", answer.body);
        assert_eq!(answer.echo()["path"], upstream_path, "{target}");
    }
}

#[tokio::test]
async fn http2_paths_are_normalised_like_http1_ones() {
    let proxy = Hostile::start(ADMIN_ROUTES, &[]).await;
    let stream = tokio::net::TcpStream::connect(&proxy.address)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for (path, expected) in [
        ("/public/%2e%2e/admin", 403),
        ("//admin", 403),
        ("/admin%2f", 400),
        ("/ADMIN", 400),
        ("/public/../echo", 200),
    ] {
        let request = hyper::Request::get(format!("http://{}{path}", proxy.address))
            .header("cookie", &proxy.cookie)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{path}");
    }
    assert_eq!(
        proxy.upstream.served(),
        1,
        "only /echo reached the upstream"
    );
}

#[tokio::test]
async fn hosts_are_matched_in_their_normal_form_and_the_target_authority_wins() {
    let proxy = Hostile::start(ADMIN_ROUTES, &[]).await;
    for host in [
        "admin.example",
        "ADMIN.example",
        "admin.example.",
        "Admin.Example.:8080",
    ] {
        let answer = proxy.get("/echo", &[&format!("Host: {host}")]).await;
        assert_eq!(answer.status, 403, "Host: {host}");
    }
    let absolute = proxy
        .get("http://admin.example/echo", &["Host: public.example"])
        .await;
    assert_eq!(
        absolute.status, 403,
        "an absolute target's authority is the host (RFC 9112 §3.2.2)"
    );
    let twice = proxy
        .get("/echo", &["Host: public.example", "Host: admin.example"])
        .await;
    assert_eq!(twice.status, 400, "two Host headers (RFC 9112 §3.2)");
    assert_eq!(proxy.upstream.served(), 0);

    let public = proxy.get("/echo", &["Host: Public.Example."]).await;
    assert_eq!(public.status, 200);
    let headers = received(&public.echo());
    assert_eq!(headers["host"], ["public.example"]);
    assert_eq!(headers["x-forwarded-host"], ["public.example"]);
}

/// Forwarding headers a client might send, with the underscore spellings.
const FORWARDING: &[&str] = &[
    "X-Real-IP: 203.0.113.7",
    "X_Real_IP: 203.0.113.7",
    "Forwarded: for=203.0.113.7;host=evil.example;proto=https",
    "X-Forwarded-Port: 8443",
    "X-Forwarded-Prefix: /evil",
    "X-Forwarded-Server: evil.example",
    "X-Forwarded-Ssl: on",
    "X-Original-URL: /admin",
    "X-Rewrite-URL: /admin",
    "X-Original-URI: /admin",
    "True-Client-IP: 203.0.113.7",
    "X-Client-IP: 203.0.113.7",
    "X_Forwarded_For: 203.0.113.7",
    "X_Forwarded_Host: evil.example",
    "X_Forwarded_Proto: https",
    "X_Forwarded_Prefix: /evil",
    "X_Original_URL: /admin",
    "Transfer_Encoding: chunked",
];

#[tokio::test]
async fn a_clients_forwarding_headers_are_replaced_or_dropped() {
    let proxy = Hostile::start(ADMIN_ROUTES, &[]).await;
    let mut sent: Vec<&str> = FORWARDING.to_vec();
    sent.extend([
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-For: 203.0.113.7",
    ]);
    let answer = proxy.get("/echo", &sent).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let headers = received(&answer.echo());
    assert_eq!(headers["x-real-ip"], ["127.0.0.1"]);
    assert_eq!(headers["x-forwarded-for"], ["127.0.0.1"]);
    assert_eq!(headers["x-forwarded-host"], [proxy.address.as_str()]);
    assert_eq!(headers["x-forwarded-proto"], ["http"]);
    let left: Vec<&String> = headers
        .keys()
        .filter(|n| {
            n.contains('_')
                || [
                    "forwarded",
                    "x-forwarded-port",
                    "x-forwarded-prefix",
                    "x-forwarded-server",
                    "x-forwarded-ssl",
                    "x-original-url",
                    "x-rewrite-url",
                    "x-original-uri",
                    "true-client-ip",
                    "x-client-ip",
                ]
                .contains(&n.as_str())
        })
        .collect();
    assert!(left.is_empty(), "reached the upstream: {left:?}");
}

#[tokio::test]
async fn a_trusted_proxy_is_believed_for_the_hop_it_added_and_no_more() {
    let proxy = Hostile::start(
        ADMIN_ROUTES,
        &[("TESSERA_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1/32\"]")],
    )
    .await;
    let mut sent: Vec<&str> = FORWARDING.to_vec();
    sent.extend([
        // What the client sent, then what the trusted proxy appended.
        "X-Forwarded-Host: admin.example, app.example",
        "X-Forwarded-Proto: http, https",
        "X-Forwarded-For: 198.51.100.1, 203.0.113.5",
    ]);
    let answer = proxy.get("/echo", &sent).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let headers = received(&answer.echo());
    assert_eq!(headers["x-forwarded-host"], ["app.example"]);
    assert_eq!(headers["x-forwarded-proto"], ["https"]);
    assert_eq!(
        headers["x-forwarded-for"],
        ["198.51.100.1, 203.0.113.5, 127.0.0.1"]
    );
    assert_eq!(
        headers["x-real-ip"],
        ["203.0.113.5"],
        "the nearest address no trusted proxy claims"
    );
    assert_eq!(
        headers["x-forwarded-prefix"],
        ["/evil"],
        "the trusted proxy's"
    );
    assert_eq!(headers["forwarded"].len(), 1);
    for gone in ["x-original-url", "x-rewrite-url", "x-original-uri"] {
        assert!(
            !headers.contains_key(gone),
            "{gone} overrides the checked path"
        );
    }
    let underscored: Vec<&String> = headers.keys().filter(|n| n.contains('_')).collect();
    assert!(underscored.is_empty(), "{underscored:?}");

    // The host a trusted proxy names is the one routes are matched on.
    let admin = proxy
        .get(
            "/echo",
            &["X-Forwarded-Host: public.example, admin.example"],
        )
        .await;
    assert_eq!(admin.status, 403);
}

#[tokio::test]
async fn anonymous_hostile_paths_are_refused_before_the_login() {
    let upstream = Upstream::start().await;
    let routes = format!(
        "[{{path_prefix: /admin, upstream: '{0}', allowed_groups: [ops]}}, {{upstream: '{0}'}}]",
        upstream.url()
    );
    let server = start_proxy(&upstream, &[("TESSERA_PROXY__ROUTES", &routes)]).await;
    let address = server.proxy.clone().unwrap();
    let address = address.trim_start_matches("http://");
    let answer = send_raw(
        address,
        &format!("GET /admin%2f HTTP/1.1\r\nHost: {address}\r\nAccept: text/html"),
    )
    .await;
    assert_eq!(answer.status, 400);
    let login = send_raw(
        address,
        &format!("GET /public/%2e%2e/admin?x=1 HTTP/1.1\r\nHost: {address}\r\nAccept: text/html"),
    )
    .await;
    assert_eq!(login.status, 302);
    assert_eq!(
        login.header("location"),
        Some("/oauth2/start?rd=%2Fadmin%3Fx%3D1"),
        "the login returns to the normal form"
    );
}
