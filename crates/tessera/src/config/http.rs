//! The `http:` section: trusted proxies, and the timeouts and connection caps of both
//! listeners.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration, parse_duration};
use crate::listener::Limits;

/// Both listeners: the provider's (HTTPS) and the proxy's (HTTP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    /// Load balancers and proxies (addresses or CIDRs) whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<String>,
    /// Time a client has to send a request's headers, from the connection's start (after TLS)
    /// or the end of the previous answer; an idle HTTP/1.1 keep-alive ends then too.
    header_read_timeout: String,
    /// A connection without a request in flight for this long is closed.
    idle_timeout: String,
    /// Time a client has to complete the TLS handshake.
    tls_handshake_timeout: String,
    /// Time a client has to send a request's whole body, from the first wait for it.
    body_timeout: String,
    /// Most connections open at once, both listeners together; lowered to fit the open-files
    /// limit.
    max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64);
    /// `trusted_proxies` are exempt.
    max_connections_per_ip: usize,
    /// On SIGTERM or SIGINT: how long the process may take to stop. `/readyz` fails at once,
    /// new connections are still taken for the first half, and what is in flight when this
    /// runs out is cut.
    shutdown_grace: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            trusted_proxies: Vec::new(),
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            tls_handshake_timeout: "10s".into(),
            body_timeout: "30s".into(),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            shutdown_grace: "20s".into(),
        }
    }
}

/// The validated `http:` section.
pub(super) struct Http {
    pub(super) trusted_proxies: Vec<ipnet::IpNet>,
    pub(super) limits: Limits,
    pub(super) shutdown_grace: Duration,
}

pub(super) fn validate(raw: &RawHttp) -> Result<Http, Invalid> {
    Ok(Http {
        trusted_proxies: trusted_proxies(&raw.trusted_proxies)?,
        limits: limits(raw)?,
        shutdown_grace: duration("http.shutdown_grace", &raw.shutdown_grace)?,
    })
}

fn trusted_proxies(raw: &[String]) -> Result<Vec<ipnet::IpNet>, Invalid> {
    raw.iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    (
                        format!("http.trusted_proxies[{i}]"),
                        format!("`{text}` is not an address or a CIDR like 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

fn limits(raw: &RawHttp) -> Result<Limits, Invalid> {
    let timeout = |key: &str, text: &str| {
        let key = format!("http.{key}");
        match parse_duration(text) {
            Ok(d) if d.is_zero() => Err((key, "must be longer than 0ms".to_owned())),
            Ok(d) => Ok(d),
            Err(m) => Err((key, m)),
        }
    };
    let count = |key: &str, n: usize| {
        if n == 0 {
            Err((format!("http.{key}"), "must be at least 1".to_owned()))
        } else {
            Ok(n)
        }
    };
    Ok(Limits {
        header_read_timeout: timeout("header_read_timeout", &raw.header_read_timeout)?,
        idle_timeout: timeout("idle_timeout", &raw.idle_timeout)?,
        tls_handshake_timeout: timeout("tls_handshake_timeout", &raw.tls_handshake_timeout)?,
        body_timeout: timeout("body_timeout", &raw.body_timeout)?,
        max_connections: count("max_connections", raw.max_connections)?,
        max_connections_per_ip: count("max_connections_per_ip", raw.max_connections_per_ip)?,
    })
}
