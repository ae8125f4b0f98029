//! How the proxy takes connections: one listening socket per core on the same port
//! (`SO_REUSEPORT`, the kernel spreads new connections over them), each served by its own
//! single-threaded Tokio runtime on its own thread, as nginx runs one worker per core. A
//! proxied request then stays on one thread from the client's socket to the upstream's and
//! back: no task hops between threads and no wake-ups of a parked worker (`bench/proxy`: c/b
//! 0.65 with one multi-threaded runtime, 0.75–0.79 with this). The price: work that holds a
//! thread, such as `tessera serve` signing a refreshed id_token in-process (about a
//! millisecond, once per session and `refresh_after`), delays that thread's other requests.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use socket2::{Domain, Socket, Type};

use super::caller::Peer;
use super::{Proxy, router};
use crate::listener::Connections;
use crate::shutdown::Shutdown;

/// Connections the kernel queues for a socket before the proxy accepts them.
const BACKLOG: i32 = 1024;

/// The proxy's listening sockets: one per core, all on one address.
pub struct Listeners {
    sockets: Vec<TcpListener>,
    address: SocketAddr,
}

impl Listeners {
    /// Binds one socket per available core on `address` (port 0: one free port for all).
    pub fn bind(address: SocketAddr) -> Result<Listeners> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if address.port() != 0 {
            // Sharing a port is only for our own sockets: a port another process (a second
            // tessera, say) already listens on is an error, as without SO_REUSEPORT.
            drop(
                TcpListener::bind(address)
                    .with_context(|| format!("the proxy cannot listen on {address}"))?,
            );
        }
        let first = reuse_port_socket(address)
            .with_context(|| format!("the proxy cannot listen on {address}"))?;
        let address = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..cores {
            sockets.push(
                reuse_port_socket(address)
                    .with_context(|| format!("the proxy cannot listen on {address} again"))?,
            );
        }
        Ok(Listeners { sockets, address })
    }

    /// The address bound (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves `proxy` on every socket (HTTP/1.1 and HTTP/2 cleartext), each on its own thread,
    /// under the timeouts and caps of `connections`, until `shutdown` has drained them all;
    /// answers how many connections were cut, or the first thread's failure.
    pub async fn serve(
        self,
        proxy: Arc<Proxy>,
        connections: Connections,
        shutdown: Shutdown,
    ) -> Result<usize> {
        let threads = self.sockets.len();
        let (ended, mut endings) = tokio::sync::mpsc::channel(threads);
        for (i, socket) in self.sockets.into_iter().enumerate() {
            let proxy = Arc::clone(&proxy);
            let connections = connections.clone();
            let shutdown = shutdown.clone();
            let ended = ended.clone();
            std::thread::Builder::new()
                .name(format!("tessera-proxy-{i}"))
                .spawn(move || {
                    let outcome = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the proxy's runtime")
                        .and_then(|runtime| {
                            runtime.block_on(serve_socket(socket, proxy, connections, shutdown))
                        });
                    // Nobody listens any more only when the process is ending.
                    let _ = ended.blocking_send(outcome);
                })
                .context("cannot start a proxy thread")?;
        }
        drop(ended);
        let mut cut = 0;
        for _ in 0..threads {
            match endings.recv().await {
                Some(Ok(n)) => cut += n,
                Some(Err(error)) => return Err(error.context("a proxy thread stopped")),
                None => anyhow::bail!("a proxy thread stopped"),
            }
        }
        Ok(cut)
    }
}

/// One socket's connections, on the current thread's runtime, until `shutdown` has drained
/// them; answers how many were cut.
async fn serve_socket(
    socket: TcpListener,
    proxy: Arc<Proxy>,
    connections: Connections,
    shutdown: Shutdown,
) -> Result<usize> {
    let listener = tokio::net::TcpListener::from_std(socket)?;
    Ok(connections
        .serve(
            listener,
            None,
            router(proxy),
            |peer: SocketAddr| Peer::new(peer.ip()),
            &shutdown,
        )
        .await)
}

/// A non-blocking listening socket that later sockets of this user may share the port with
/// (Linux lets no other account join).
fn reuse_port_socket(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure
mod tests {
    use super::*;

    #[test]
    fn every_socket_shares_the_chosen_port() {
        let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listeners.local_addr();
        assert_ne!(address.port(), 0);
        for socket in &listeners.sockets {
            assert_eq!(socket.local_addr().unwrap(), address);
        }
    }

    #[test]
    fn a_port_in_use_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = Listeners::bind(taken.local_addr().unwrap()).err().unwrap();
        assert!(format!("{error:#}").contains("cannot listen"), "{error:#}");
        let ours = Listeners::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(
            Listeners::bind(ours.local_addr()).is_err(),
            "a second proxy on the port"
        );
    }
}
