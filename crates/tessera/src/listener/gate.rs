//! The connection caps: how many connections are open, in total and per client address, and
//! the place each admitted connection holds until its socket closes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Limits;

/// Connections open now, in total and per client address.
pub(super) struct Gate {
    max_connections: usize,
    max_per_ip: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Gate {
    pub(super) fn new(limits: &Limits, trusted_proxies: &[ipnet::IpNet]) -> Gate {
        Gate {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            exempt: trusted_proxies.to_vec(),
            open: Mutex::new(Open::default()),
        }
    }

    /// A place for a connection from `peer`, or `None` when a cap is reached. A trusted proxy
    /// carries many clients on its address: it counts towards `max_connections` only.
    pub(super) fn admit(self: &Arc<Gate>, peer: IpAddr) -> Option<Admission> {
        let key = Some(client_key(peer)).filter(|_| !self.exempt.iter().any(|n| n.contains(&peer)));
        // A panic while counting cannot leave the counts half-updated: each is one statement.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_connections {
            return None;
        }
        if let Some(key) = key {
            let count = open.per_ip.entry(key).or_default();
            if *count >= self.max_per_ip {
                return None;
            }
            *count += 1;
        }
        open.total += 1;
        Some(Admission {
            gate: Arc::clone(self),
            key,
        })
    }
}

/// The per-address key: IPv4-mapped addresses as IPv4, IPv6 by its /64 (one subscriber's
/// prefix, from which it can pick any address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// A connection's place in the [`Gate`], given back when the connection's socket closes.
pub(super) struct Admission {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(key) = self.key
            && let Some(count) = open.per_ip.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&key);
            }
        }
    }
}

/// A socket holding its [`Admission`]: the place is given back when the socket is dropped,
/// also when a websocket took it over from HTTP.
pub(super) struct Admitted<T> {
    io: T,
    _admission: Admission,
}

impl<T> Admitted<T> {
    pub(super) fn new(io: T, admission: Admission) -> Admitted<T> {
        Admitted {
            io,
            _admission: admission,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Admitted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Admitted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_is_capped_and_its_places_come_back_on_close() {
        let gate = Arc::new(Gate::new(&Limits::caps(100, 2), &[]));
        let first = gate.admit(ip("192.0.2.1")).unwrap();
        let _second = gate.admit(ip("192.0.2.1")).unwrap();
        assert!(gate.admit(ip("192.0.2.1")).is_none());
        assert!(gate.admit(ip("192.0.2.2")).is_some(), "another address");
        drop(first);
        assert!(gate.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn the_process_is_capped_across_addresses() {
        let gate = Arc::new(Gate::new(&Limits::caps(2, 10), &[]));
        let held: Vec<_> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .map(|a| gate.admit(ip(a)).unwrap())
            .collect();
        assert!(gate.admit(ip("192.0.2.3")).is_none());
        drop(held);
        assert!(gate.admit(ip("192.0.2.3")).is_some());
        assert_eq!(
            gate.open.lock().unwrap().per_ip.len(),
            0,
            "nothing left behind"
        );
    }

    #[test]
    fn trusted_proxies_count_only_towards_the_process_cap() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let gate = Arc::new(Gate::new(&Limits::caps(3, 1), &trusted));
        let _a = gate.admit(ip("10.1.2.3")).unwrap();
        let _b = gate.admit(ip("10.1.2.3")).unwrap();
        let _c = gate.admit(ip("10.1.2.3")).unwrap();
        assert!(
            gate.admit(ip("10.1.2.3")).is_none(),
            "max_connections still holds"
        );
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let gate = Arc::new(Gate::new(&Limits::caps(100, 1), &[]));
        let _one = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(gate.admit(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_some());
        let _v4 = gate.admit(ip("192.0.2.7")).unwrap();
        assert!(gate.admit(ip("::ffff:192.0.2.7")).is_none());
    }
}
