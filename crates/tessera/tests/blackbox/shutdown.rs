//! Issue 12, graceful shutdown: on SIGTERM a replica fails `/readyz` at once, keeps taking
//! connections for the first half of `http.shutdown_grace` (answering HTTP/1 with
//! `Connection: close`), finishes the requests in flight, flushes the audit log and exits 0,
//! also when the grace runs out; no refresh answered 200 is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::cluster::signal;
use crate::listener_limits::{proxy_address, read_until_closed, tls_connect};
use crate::proxy_external::StandaloneProxy;
use crate::support::{Server, client, text};
use crate::upstream::Upstream;

/// Refresh chains running at once, each its own login.
const CHAINS: usize = 4;

/// Refreshes answered on every chain, on average, before SIGTERM is sent.
const BEFORE_SIGNAL: usize = 5;

#[tokio::test]
async fn sigterm_under_refresh_load_exits_0_and_loses_no_refresh_answered_200() {
    let mut server = Server::start_with(&[("TESSERA_HTTP__SHUTDOWN_GRACE", "4s")]).await;
    let mut firsts = Vec::new();
    for _ in 0..CHAINS {
        firsts.push(text(&server.kubernetes_tokens().await, "refresh_token"));
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let chains: Vec<_> = firsts
        .into_iter()
        .map(|first| {
            let http = client(&server.ca, false);
            tokio::spawn(refresh_chain(
                http,
                server.url("/token"),
                first,
                Arc::clone(&answered),
            ))
        })
        .collect();
    for _ in 0..3000 {
        if answered.load(Ordering::Relaxed) >= CHAINS * BEFORE_SIGNAL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        answered.load(Ordering::Relaxed) >= CHAINS * BEFORE_SIGNAL,
        "the chains did not get going"
    );
    signal("-TERM", server.pid());
    let status = server.exited().await;
    assert!(status.success(), "tessera exited with {status}");
    let mut chains_ended = Vec::new();
    for chain in chains {
        chains_ended.push(chain.await.expect("a chain ended without a panic"));
    }
    for chain in &chains_ended {
        assert_eq!(chain.refused, None, "a refresh was refused");
    }
    assert!(
        chains_ended.iter().any(|c| c.while_draining > 0),
        "connections made after SIGTERM were served (answers with `Connection: close`)"
    );

    // Every answered refresh is in the audit log, flushed before the exit.
    let audited: HashSet<String> = server
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "TokenRefreshed")
        .filter_map(|e| e["token_id"].as_str().map(str::to_owned))
        .collect();
    for chain in &chains_ended {
        for redeemed in &chain.redeemed {
            assert!(
                audited.contains(&token_id(redeemed)),
                "a refresh answered 200 has no TokenRefreshed line"
            );
        }
    }

    // Restarted on the same data directory, every chain goes on from the last token it was
    // given: none was spent without its answer arriving.
    let restarted = Server::start_in(server.stop(), &[]).await;
    for chain in &chains_ended {
        let (status, body) = restarted.refresh(&chain.last).await;
        assert_eq!(status, StatusCode::OK, "a chain's last token: {body}");
    }
}

#[tokio::test]
async fn readyz_fails_at_once_on_sigterm_while_a_slow_refresh_is_still_answered() {
    let mut server = Server::start_with(&[("TESSERA_HTTP__SHUTDOWN_GRACE", "4s")]).await;
    let token = text(&server.kubernetes_tokens().await, "refresh_token");
    assert_eq!(server.get("/readyz").await.status, StatusCode::OK);
    // A refresh whose body comes in two parts, the second after SIGTERM: its handler is
    // waiting for the body, in flight, when the signal comes.
    let form = format!("grant_type=refresh_token&client_id=kubernetes&refresh_token={token}");
    let (first_part, second_part) = form.split_at(form.len() / 2);
    let mut slow = tls_connect(&server, false).await;
    let head = format!(
        "POST /token HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{first_part}",
        form.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();

    signal("-TERM", server.pid());
    let mut readyz = server.get("/readyz").await;
    for _ in 0..500 {
        if readyz.status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        readyz = server.get("/readyz").await;
    }
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.body, "shutting down\n");
    assert_eq!(
        server.get("/healthz").await.status,
        StatusCode::OK,
        "alive while it drains: the kubelet must not restart it"
    );

    slow.write_all(second_part.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("\"refresh_token\":\"tsr1_"), "{answer}");
    let status = server.exited().await;
    assert!(status.success(), "tessera exited with {status}");
}

#[tokio::test]
async fn when_the_grace_runs_out_open_connections_are_cut_and_counted_and_the_exit_is_0() {
    let upstream = Upstream::start().await;
    let mut server =
        crate::proxy::start_proxy(&upstream, &[("TESSERA_HTTP__SHUTDOWN_GRACE", "1s")]).await;
    // The provider: a request whose body never comes whole (http.body_timeout is 30 s).
    let mut provider = tls_connect(&server, false).await;
    provider
        .write_all(
            b"POST /token HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Content-Length: 1000\r\n\r\ngrant_type=",
        )
        .await
        .unwrap();
    provider.flush().await.unwrap();
    // The proxy: headers that never end (http.header_read_timeout is 10 s).
    let mut proxy = TcpStream::connect(proxy_address(&server)).await.unwrap();
    proxy
        .write_all(b"GET /oauth2/auth HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();

    signal("-TERM", server.pid());
    let status = server.exited().await;
    assert!(status.success(), "tessera exited with {status}");
    let log: Vec<String> = server.log().iter().map(|l| without_colours(l)).collect();
    let cut = log
        .iter()
        .find(|l| l.contains("shutdown_grace ran out"))
        .unwrap_or_else(|| panic!("no line counts the cut connections: {log:#?}"));
    let count: usize = cut
        .split("connections=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the line gives no count: {cut}"));
    assert!(count >= 2, "the provider's and the proxy's: {cut}");
    read_until_closed(&mut provider).await;
}

#[tokio::test]
async fn a_second_signal_cuts_at_once_what_a_long_grace_would_wait_for() {
    let mut server = Server::start_with(&[("TESSERA_HTTP__SHUTDOWN_GRACE", "10m")]).await;
    let mut held = tls_connect(&server, false).await;
    held.write_all(
        b"POST /token HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 1000\r\n\r\ngrant_type=",
    )
    .await
    .unwrap();
    held.flush().await.unwrap();
    signal("-TERM", server.pid());
    signal("-INT", server.pid());
    // Within `exited`'s minute only if the second signal cut the ten-minute grace short.
    let status = server.exited().await;
    assert!(status.success(), "tessera exited with {status}");
    read_until_closed(&mut held).await;
}

#[tokio::test]
async fn the_standalone_proxy_answers_while_it_drains_and_exits_0() {
    // In front of a provider it never needs to reach: `/oauth2/auth` without a cookie answers
    // 401 by itself.
    let mut proxy = StandaloneProxy::start(
        "proxy:
  listen: 127.0.0.1:0
  routes: [{upstream: 'http://127.0.0.1:9'}]
  session: {store: cookie}
  cookie: {secret: 'KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio='}
  provider: {issuer: 'https://127.0.0.1:9', client_id: rp, client_secret: s}
http:
  shutdown_grace: 4s
",
    );
    let http = cleartext_client();
    let auth = format!("{}/oauth2/auth", proxy.url);
    assert_eq!(
        http.get(&auth).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    signal("-TERM", proxy.pid());
    // Until the signal is handled answers keep their connection; after it, new connections
    // are still served, each answer closing its own.
    let mut draining = false;
    for _ in 0..500 {
        let response = http.get(&auth).send().await.expect("still accepting");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        if response
            .headers()
            .get(reqwest::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
        {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "no answer said `Connection: close`");
    let status = proxy.exited().await;
    assert!(status.success(), "tessera proxy exited with {status}");
}

/// How a refresh chain ended.
struct ChainEnd {
    /// The last refresh token the chain was given.
    last: String,
    /// Every token redeemed with a 200 answer.
    redeemed: Vec<String>,
    /// Answers that came with `Connection: close`: served while the server drained.
    while_draining: usize,
    /// A refusal (status and body), which no refresh should get.
    refused: Option<String>,
}

/// Refreshes one chain as fast as answers come, until the server stops answering.
async fn refresh_chain(
    http: reqwest::Client,
    url: String,
    first: String,
    answered: Arc<AtomicUsize>,
) -> ChainEnd {
    let mut chain = ChainEnd {
        last: first,
        redeemed: Vec::new(),
        while_draining: 0,
        refused: None,
    };
    loop {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", chain.last.as_str()),
            ("client_id", "kubernetes"),
        ];
        // Refused or reset: the listeners have closed, and the request was not taken.
        let Ok(response) = http.post(&url).form(&form).send().await else {
            return chain;
        };
        let status = response.status();
        let closing = response
            .headers()
            .get(reqwest::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body: Value = response
            .json()
            .await
            .expect("an answer that started arrives whole: nothing is cut within the grace");
        if status != StatusCode::OK {
            chain.refused = Some(format!("{status} {body}"));
            return chain;
        }
        let next = text(&body, "refresh_token");
        chain
            .redeemed
            .push(std::mem::replace(&mut chain.last, next));
        if closing {
            chain.while_draining += 1;
        }
        answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client for the proxy's cleartext HTTP (reqwest wants a TLS set-up all the same).
fn cleartext_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

/// The audit log's `token_id` of a token: the first 16 hex digits of its SHA-256.
fn token_id(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))[..16].to_owned()
}

/// A log line without its ANSI colour sequences (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}
